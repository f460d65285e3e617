//! The process-changes Lambda: wires config and clients once per cold start, then serves batches.

use std::sync::Arc;
use std::time::Instant;

use lambda_runtime::{LambdaEvent, run, service_fn};
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let started = Instant::now();
    shared::telemetry::init();
    let aws = aws_config::load_from_env().await;
    let processor = match process_changes::wire(&Env::process(), &aws, shared::clock::system()).await {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::error!(error = %e, "process-changes cannot start");
            return Err(e.into());
        }
    };
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1000.0,
        "process-changes ready"
    );
    run(service_fn(
        move |event: LambdaEvent<aws_lambda_events::sqs::SqsEvent>| {
            let processor = processor.clone();
            async move {
                let deadline = process_changes::handler::deadline_from_epoch_ms(event.context.deadline);
                Ok::<_, lambda_runtime::Error>(processor.handle(event.payload, deadline).await)
            }
        },
    ))
    .await
}
