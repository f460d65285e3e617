//! A local stand-in for API Gateway (HTTP API, payload v2): serves the routes `template.yaml`
//! declares and hands each request to the function behind it, in-process, as a
//! `lambda_http::Request`, the same type the Lambda runtime gives the handler.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::{DefaultBodyLimit, Request as AxumRequest};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::{MethodFilter, on};
use futures::future::BoxFuture;
use lambda_http::{Body, Request, RequestExt, Response};

use crate::template::Route;

/// API Gateway's HTTP API payload limit: bodies up to this reach the function (notify applies
/// its own, smaller limit and answers 413 itself).
pub const API_GATEWAY_BODY_LIMIT: usize = 10 * 1024 * 1024;

/// A function that answers HTTP API events.
pub trait HttpFunction: Send + Sync {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>>;
}

impl HttpFunction for notify::Notify {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

impl HttpFunction for connect::Connect {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

/// Why the routes could not be served.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("template.yaml routes {method} {path} to {function}, which the local stack does not run")]
    NoSuchFunction {
        method: String,
        path: String,
        function: String,
    },
    #[error("template.yaml route {method} {path} has a method the local stack does not know")]
    BadMethod { method: String, path: String },
}

/// The router for `routes`, each served by the function of its logical id.
pub fn router(
    routes: &[Route],
    functions: &HashMap<String, Arc<dyn HttpFunction>>,
) -> Result<Router, GatewayError> {
    let mut router = Router::new();
    for route in routes {
        let function =
            functions
                .get(&route.function)
                .cloned()
                .ok_or_else(|| GatewayError::NoSuchFunction {
                    method: route.method.clone(),
                    path: route.path.clone(),
                    function: route.function.clone(),
                })?;
        let method = MethodFilter::try_from(route.method.parse::<http::Method>().map_err(|_| {
            GatewayError::BadMethod {
                method: route.method.clone(),
                path: route.path.clone(),
            }
        })?)
        .map_err(|_| GatewayError::BadMethod {
            method: route.method.clone(),
            path: route.path.clone(),
        })?;
        router = router.route(
            &route.path,
            on(method, move |request: AxumRequest| {
                invoke(function.clone(), request)
            }),
        );
    }
    Ok(router.layer(DefaultBodyLimit::max(API_GATEWAY_BODY_LIMIT)))
}

async fn invoke(function: Arc<dyn HttpFunction>, request: AxumRequest) -> AxumResponse {
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, API_GATEWAY_BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return (http::StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large").into_response(),
    };
    let body = if bytes.is_empty() {
        Body::Empty
    } else {
        Body::Binary(bytes.to_vec())
    };
    // API Gateway hands the function the decoded query string as well as the raw one.
    let mut query: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        query.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    let request = Request::from_parts(parts, body).with_query_string_parameters(query);
    let response = function.call(request).await;
    let (parts, body) = response.into_parts();
    let bytes: Vec<u8> = match body {
        Body::Empty => Vec::new(),
        Body::Text(t) => t.into_bytes(),
        Body::Binary(b) => b,
        _ => Vec::new(),
    };
    AxumResponse::from_parts(parts, AxumBody::from(bytes))
}
