//! The connect Lambda: wires config and clients once per cold start, then serves requests.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use lambda_http::{run, service_fn};
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let started = Instant::now();
    shared::telemetry::init();
    let aws = aws_config::load_from_env().await;
    let connect = match connect::wire(&Env::process(), &aws, shared::clock::system()).await {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(error = %e, "connect cannot start");
            return Err(e.into());
        }
    };
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1000.0,
        "connect ready"
    );
    run(service_fn(move |request| {
        let connect = connect.clone();
        async move { Ok::<_, Infallible>(connect.handle(request).await) }
    }))
    .await
}
