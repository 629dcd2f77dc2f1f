//! Logging and tracing: `tracing` to stderr (text or JSON), an OpenTelemetry tracer so every
//! span has W3C ids that can cross NATS, and OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Keeps the tracer alive; flushes pending spans when dropped.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Errors here only mean "no collector listened"; nothing to tell the user at exit.
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber. `filter` uses `EnvFilter` syntax; `RUST_LOG` overrides it.
pub fn init(service: &'static str, format: LogFormat, filter: &str) -> anyhow::Result<Telemetry> {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build());
    let exporting = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    if exporting {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());

    let spec = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => f,
        _ => filter.to_string(),
    };
    let mut filter = EnvFilter::try_new(&spec)?;
    // async-nats prints its connect options, credentials included, at debug level: never let
    // those lines through, whatever filter was asked for. (Only a filter that lets debug or
    // trace through needs the cap; adding it to a quieter one would make async-nats louder.)
    let lower = spec.to_ascii_lowercase();
    if lower.contains("debug") || lower.contains("trace") {
        filter = filter.add_directive("async_nats=info".parse()?);
    }
    let filter = filter
        // hickory-server logs every query and answer at info level: a line per packet is a
        // benchmark's worth of I/O, not a log. Its warnings still get through.
        .add_directive("hickory_server=warn".parse()?);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()?;
    if exporting {
        tracing::info!("exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}
