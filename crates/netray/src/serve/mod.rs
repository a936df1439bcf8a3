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
//! Certificates come from PEM files or ACME (TLS-ALPN-01). Connections are
//! admitted by per-client and global caps and closed when they send no
//! request for too long; new traces are admitted by per-client and global
//! caps and a per-client rate limit; further requests on a connection join
//! its trace for free.
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
use http_body_util::BodyExt as _;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
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
        let mut config = config;
        // While we may still raise the hard limit (root, CAP_SYS_RESOURCE).
        config.max_connections = limits::raise_fd_limit(config.max_connections);
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

    /// Gives what the server writes after a privilege drop to `uid`:`gid`:
    /// the ACME cache directory and the files in it (account key,
    /// certificates), so that renewals can store their results.
    pub fn hand_over_files(&self, uid: u32, gid: u32) -> anyhow::Result<()> {
        let Some(TlsSource::Acme(acme)) = &self.config.tls else {
            return Ok(());
        };
        let Some(dir) = &acme.cache else {
            return Ok(());
        };
        let chown = |path: &std::path::Path| {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).with_context(|| {
                format!(
                    "--acme-cache: cannot give {} to uid {uid} (the --user)",
                    path.display()
                )
            })
        };
        chown(dir)?;
        for entry in std::fs::read_dir(dir)
            .with_context(|| format!("cannot read --acme-cache {}", dir.display()))?
        {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            chown(&entry.path())?;
        }
        Ok(())
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
        let connections = limits::ConnectionLimiter::new(
            config.max_connections,
            config.max_connections_per_client,
        );
        let timeouts = Timeouts {
            first_request: config.first_request_timeout,
            idle: config.idle_timeout,
        };
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
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Refused connections are closed at once: the listener keeps
            // accepting, so one client at its cap cannot starve the others.
            let permit = match connections.try_acquire(peer.ip()) {
                Ok(permit) => permit,
                Err(refusal) => {
                    tracing::debug!(%peer, reason = refusal.reason(), "connection refused");
                    app.metrics.connection_refused(refusal.reason());
                    drop(stream);
                    continue;
                }
            };
            let app = app.clone();
            let builder = builder.clone();
            let stop = stop_rx.clone();
            tasks.spawn(async move {
                let _permit = permit;
                app.metrics.connection_opened();
                if let Err(e) = handle_connection(stream, tls, &app, &builder, timeouts, stop).await
                {
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

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves one accepted connection (TLS handshake first if `tls`).
async fn handle_connection(
    stream: TcpStream,
    tls: Option<Arc<TlsMode>>,
    app: &Arc<App>,
    builder: &auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
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
    let ctx = Arc::new(ConnCtx::new(Arc::clone(&conn)));
    let served = match tls {
        None => serve_io(TokioIo::new(stream), ctx, app, builder, timeouts, stop).await,
        Some(mode) => match tls::accept(&mode, stream).await {
            Ok(Some(tls_stream)) => {
                serve_io(TokioIo::new(tls_stream), ctx, app, builder, timeouts, stop).await
            }
            Ok(None) => Ok(()),
            Err(e) => {
                app.metrics.tls_failure();
                Err(e)
            }
        },
    };
    // The socket closes when the last holder of the connection drops it;
    // its kernel flow state goes now (a trace still running keeps its own).
    app.tracer.connection_closed(&conn);
    drain_before_close(&conn.socket, LINGER).await;
    served
}

/// How long a closing connection waits for the peer's FIN.
const LINGER: Duration = Duration::from_secs(2);

/// Closes like nginx's `lingering_close`: send our FIN, then read and discard
/// until the peer's FIN (or `limit`). Closing a socket with unread data makes
/// the kernel answer with an RST instead of a FIN, and an RST can destroy
/// what the peer has not read yet: an HTTP/2 client whose PING crossed our
/// GOAWAY would see its connection reset instead of closed.
async fn drain_before_close(socket: &std::os::fd::OwnedFd, limit: Duration) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // A duplicate descriptor: the connection's own closes when it drops.
    let Ok(fd) = socket.try_clone() else { return };
    let stream = std::net::TcpStream::from(fd);
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(mut stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let _ = tokio::time::timeout(limit, async {
        // ENOTCONN after a reset: nothing left to drain.
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut discard = [0u8; 4096];
        while let Ok(n) = stream.read(&mut discard).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// How long a connection may go without a request in flight.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    /// From the start of HTTP (after TLS) to the first request head.
    first_request: Duration,
    /// After a request's response is complete, until the next request head.
    idle: Duration,
}

/// Requests in flight on one connection, and since when there were none.
#[derive(Clone, Copy, Debug)]
struct Activity {
    in_flight: usize,
    idle_since: tokio::time::Instant,
    served_any: bool,
}

/// Counts a request as in flight until its response body is dropped (sent
/// or abandoned), so a streaming response is never "idle".
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn begin(activity: &Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| {
            a.in_flight += 1;
            a.served_any = true;
        });
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 {
                a.idle_since = tokio::time::Instant::now();
            }
        });
    }
}

/// Completes when the connection has had no request in flight for its
/// timeout; returns which timeout it was (the metrics' `phase`). Frames that
/// are not requests (HTTP/2 PINGs, SETTINGS, stray bytes) do not count.
async fn idle_expired(mut activity: watch::Receiver<Activity>, timeouts: Timeouts) -> &'static str {
    loop {
        let now = *activity.borrow_and_update();
        if now.in_flight > 0 {
            if activity.changed().await.is_err() {
                return std::future::pending().await;
            }
            continue;
        }
        let (limit, phase) = if now.served_any {
            (timeouts.idle, "idle")
        } else {
            (timeouts.first_request, "first_request")
        };
        tokio::select! {
            () = tokio::time::sleep_until(now.idle_since + limit) => return phase,
            changed = activity.changed() => if changed.is_err() {
                return std::future::pending().await;
            },
        }
    }
}

async fn serve_io<I>(
    io: TokioIo<I>,
    ctx: Arc<ConnCtx>,
    app: &Arc<App>,
    builder: &auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(watch::Sender::new(Activity {
        in_flight: 0,
        idle_since: tokio::time::Instant::now(),
        served_any: false,
    }));
    let idle = idle_expired(activity.subscribe(), timeouts);
    let app = app.clone();
    let metrics_app = app.clone();
    let service = service_fn(move |mut req| {
        let app = app.clone();
        let ctx = ctx.clone();
        let in_flight = InFlight::begin(&activity);
        // Handlers get the connection from `ctx`; the extension makes it
        // reachable from the request alone too.
        req.extensions_mut().insert(ctx.conn.clone());
        async move {
            let response = routes::handle(app, ctx, req).await;
            // The body owns the in-flight mark: released when it is done.
            Ok::<_, Infallible>(response.map(|body| {
                body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                })
                .boxed()
            }))
        }
    });
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result.map_err(io::Error::other),
        _ = stop.changed() => {}
        phase = idle => {
            tracing::debug!(phase, "closing a connection that sends no request");
            metrics_app.metrics.connection_timed_out(phase);
            // HTTP/2: GOAWAY, then close (no stream is open); HTTP/1 and a
            // connection still silent: close at once. Bounded regardless.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
            return Ok(());
        }
    }
    // Shutdown: finish in-flight requests, accept no new ones.
    conn.as_mut().graceful_shutdown();
    conn.await.map_err(io::Error::other)
}
