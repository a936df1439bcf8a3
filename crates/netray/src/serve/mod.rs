//! `netray serve`: the in-band traceroute web server.
//!
//! Every visitor's request traces the network path back to the visitor
//! inside the visitor's own TCP connection (through a [`PathTracer`]) and
//! streams the hops:
//!
//! - `GET /` — an HTML page with a live table for browsers (`Accept:
//!   text/html`), a streamed plain-text table (mtr-like) for everyone else.
//! - `GET /trace` — `text/event-stream`: `hop` events (a hop again whenever
//!   it changed), then `done` with the [`TraceResult`](crate::inband::TraceResult)
//!   JSON, or `error`.
//! - `GET /trace.json` — the `TraceResult` JSON once the trace is over.
//! - `GET /healthz`, `GET /metrics` (Prometheus / OpenMetrics).
//!
//! HTTP/1.1 and HTTP/2 (h2c prior knowledge on plain HTTP; ALPN on TLS).
//! Certificates come from PEM files or ACME (TLS-ALPN-01). New traces are
//! admitted by per-client and global caps and a per-client rate limit;
//! further requests on a connection join its trace for free.
//!
//! ```no_run
//! # async fn doc(tracer: std::sync::Arc<dyn netray::inband::PathTracer>) -> anyhow::Result<()> {
//! use netray::serve::{ServeArgs, ServeConfig, Server};
//! let config = ServeConfig::from_args(ServeArgs {
//!     http: Some("[::]:8080".parse()?),
//!     ..ServeArgs::default()
//! })?;
//! let server = Server::bind(config).await?;
//! println!("listening on {:?}", server.local_http_addr());
//! server.serve(tracer, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod config;
mod html;
mod limits;
mod metrics;
mod render;
mod routes;
mod tls;

use std::{
    convert::Infallible, future::Future, io, net::SocketAddr, os::fd::AsFd as _, sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::JoinSet,
};

pub use config::{
    AcmeSettings, EngineConfig, LETS_ENCRYPT_DIRECTORY, LimitsConfig, ServeArgs, ServeConfig,
    TlsSource,
};

use crate::inband::{Connection, PathTracer};
use routes::{App, ConnCtx};
use tls::TlsMode;

/// Limit on concurrent HTTP/2 streams per connection: a page needs two or
/// three; this bounds what one connection can make us do.
const H2_MAX_STREAMS: u32 = 32;

/// How long a client may take to send request headers (HTTP/1).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Binds and runs the server until `shutdown` completes.
pub async fn run(
    config: ServeConfig,
    tracer: Arc<dyn PathTracer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Server::bind(config).await?.serve(tracer, shutdown).await
}

/// A bound, not yet serving server: lets callers (tests) bind port 0 and learn
/// the addresses before serving.
#[derive(Debug)]
pub struct Server {
    config: ServeConfig,
    http: Option<TcpListener>,
    https: Option<TcpListener>,
}

impl Server {
    /// Binds the listeners of `config` (and makes sure the ACME cache
    /// directory exists). Errors name the address at fault.
    pub async fn bind(config: ServeConfig) -> anyhow::Result<Self> {
        if let Some(TlsSource::Acme(acme)) = &config.tls
            && let Some(dir) = &acme.cache
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create --acme-cache {}", dir.display()))?;
        }
        let bind = |addr: Option<SocketAddr>, flag: &'static str| async move {
            match addr {
                None => Ok(None),
                Some(addr) => TcpListener::bind(addr)
                    .await
                    .map(Some)
                    .with_context(|| format!("cannot listen on {flag} {addr}")),
            }
        };
        let http = bind(config.http, "--http").await?;
        let https = bind(config.https, "--https").await?;
        if https.is_some() && config.tls.is_none() {
            anyhow::bail!(
                "--https needs a certificate: give --tls-cert and --tls-key, or --acme-domain"
            );
        }
        Ok(Self {
            config,
            http,
            https,
        })
    }

    /// The bound plain HTTP address.
    pub fn local_http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound HTTPS address.
    pub fn local_https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The configuration the server was bound with.
    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    /// Serves until `shutdown` completes; then stops accepting, lets
    /// in-flight requests finish for [`ServeConfig::shutdown_grace`] and
    /// drops the rest.
    pub async fn serve(
        self,
        tracer: Arc<dyn PathTracer>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            http,
            https,
        } = self;
        let (tls_mode, acme_driver) = match &config.tls {
            None => (None, None),
            Some(TlsSource::Files { config, .. }) => (Some(TlsMode::Static(config.clone())), None),
            Some(TlsSource::Acme(acme)) => {
                let (mode, driver) = tls::start_acme(acme)?;
                (Some(mode), Some(driver))
            }
        };
        let tls_mode = tls_mode.map(Arc::new);

        let app = Arc::new(App {
            limiter: limits::Limiter::new(config.limits),
            metrics: metrics::Metrics::new(tracer.clone()),
            tracer,
            probes: u32::from(config.engine.probes),
            trace_timeout: config.trace_timeout,
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .keep_alive_interval(Duration::from_secs(30));
        let builder = Arc::new(builder);
        let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        tracing::info!(
            http = ?http.as_ref().and_then(|l| l.local_addr().ok()),
            https = ?https.as_ref().and_then(|l| l.local_addr().ok()),
            "serving"
        );
        let shutdown = std::pin::pin!(shutdown);
        let mut shutdown = shutdown;
        loop {
            let (accepted, tls) = tokio::select! {
                () = &mut shutdown => break,
                accepted = accept(http.as_ref()) => (accepted, None),
                accepted = accept(https.as_ref()) => (accepted, tls_mode.clone()),
                // Reap finished connection tasks so the set stays small.
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            let stream = match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                tracing::debug!("connection limit reached, closing a new connection");
                continue;
            };
            let app = app.clone();
            let builder = builder.clone();
            let stop = stop_rx.clone();
            tasks.spawn(async move {
                let _permit = permit;
                app.metrics.connection_opened();
                if let Err(e) = handle_connection(stream, tls, &app, &builder, stop).await {
                    tracing::debug!("connection: {e}");
                }
                app.metrics.connection_closed();
            });
        }

        // Stop accepting (close the listeners), ask connections to finish.
        drop(http);
        drop(https);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::info!("shutdown: dropping {} connections still busy", tasks.len());
        }
        tasks.shutdown().await;
        if let Some(driver) = acme_driver {
            driver.abort();
        }
        Ok(())
    }
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// Serves one accepted connection (TLS handshake first if `tls`).
async fn handle_connection(
    stream: TcpStream,
    tls: Option<Arc<TlsMode>>,
    app: &Arc<App>,
    builder: &auto::Builder<TokioExecutor>,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    // Before anything else: the engine needs the socket itself (TCP_INFO,
    // TOS), so keep a duplicate of its descriptor with the addresses.
    let socket = stream.as_fd().try_clone_to_owned()?;
    let conn = Arc::new(Connection {
        local: render::plain(stream.local_addr()?),
        peer: render::plain(stream.peer_addr()?),
        socket,
    });
    // Small writes (one event each) must leave at once.
    let _ = stream.set_nodelay(true);
    let ctx = Arc::new(ConnCtx::new(conn));
    match tls {
        None => serve_io(TokioIo::new(stream), ctx, app, builder, stop).await,
        Some(mode) => match tls::accept(&mode, stream).await {
            Ok(Some(tls_stream)) => {
                serve_io(TokioIo::new(tls_stream), ctx, app, builder, stop).await
            }
            Ok(None) => Ok(()),
            Err(e) => {
                app.metrics.tls_failure();
                Err(e)
            }
        },
    }
}

async fn serve_io<I>(
    io: TokioIo<I>,
    ctx: Arc<ConnCtx>,
    app: &Arc<App>,
    builder: &auto::Builder<TokioExecutor>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = app.clone();
    let service = service_fn(move |mut req| {
        let app = app.clone();
        let ctx = ctx.clone();
        // Handlers get the connection from `ctx`; the extension makes it
        // reachable from the request alone too.
        req.extensions_mut().insert(ctx.conn.clone());
        async move { Ok::<_, Infallible>(routes::handle(app, ctx, req).await) }
    });
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result.map_err(io::Error::other),
        _ = stop.changed() => {}
    }
    // Shutdown: finish in-flight requests, accept no new ones.
    conn.as_mut().graceful_shutdown();
    conn.await.map_err(io::Error::other)
}
