//! The renew Lambda: wires config and clients once per cold start, then runs on its schedule.

use std::sync::Arc;
use std::time::Instant;

use lambda_runtime::{LambdaEvent, run, service_fn};
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let started = Instant::now();
    shared::telemetry::init();
    let aws = aws_config::load_from_env().await;
    let renew = match renew::wire(&Env::process(), &aws, shared::clock::system()).await {
        Ok(r) => Arc::new(r),
        Err(e) => {
            tracing::error!(error = %e, "renew cannot start");
            return Err(e.into());
        }
    };
    tracing::info!(init_ms = started.elapsed().as_secs_f64() * 1000.0, "renew ready");
    run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let renew = renew.clone();
        async move {
            let deadline = shared::clock::deadline_from_epoch_ms(event.context.deadline);
            Ok::<_, lambda_runtime::Error>(renew.handle(event.payload, deadline).await)
        }
    }))
    .await
}
