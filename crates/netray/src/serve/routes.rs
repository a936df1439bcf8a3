//! Request routing and the handlers.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Body, Frame};
use tokio::sync::{mpsc, watch};

use super::{
    html,
    limits::{Limiter, Refusal},
    metrics::{self, Metrics},
    render,
};
use crate::inband::{Connection, PathTracer, TraceError, TraceSnapshot};

/// Response body: fixed or streamed, never failing.
pub(crate) type ResponseBody = BoxBody<Bytes, Infallible>;

/// How often an idle event stream gets a comment, so that proxies and
/// browsers do not time it out while a slow hop is being probed.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Shared by all connections.
pub(crate) struct App {
    pub(crate) tracer: Arc<dyn PathTracer>,
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) metrics: Metrics,
    /// Probes per TTL (for the text table's "settled" heuristic).
    pub(crate) probes: u32,
    pub(crate) trace_timeout: Duration,
}

/// Per accepted connection: what every request on it shares.
pub(crate) struct ConnCtx {
    pub(crate) conn: Arc<Connection>,
    /// Whether this connection's trace was admitted by the limits. Later
    /// requests join it without counting again. A mutex (not an atomic) so
    /// that two concurrent first requests (HTTP/2) cannot both be admitted.
    admitted: Mutex<bool>,
}

impl ConnCtx {
    pub(crate) fn new(conn: Arc<Connection>) -> Self {
        Self {
            conn,
            admitted: Mutex::new(false),
        }
    }
}

/// Why a request gets no trace.
enum NoTrace {
    Refused(Refusal),
    Engine(TraceError),
}

impl NoTrace {
    fn status(&self) -> StatusCode {
        match self {
            Self::Refused(_) | Self::Engine(TraceError::Limited(_)) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Engine(TraceError::Unsupported(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Engine(TraceError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Refused(r) => Some(r.reason()),
            Self::Engine(TraceError::Limited(_)) => Some("engine"),
            Self::Engine(_) => None,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Refused(r) => r.message(),
            Self::Engine(e) => e.to_string(),
        }
    }

    /// The error response, as JSON or plain text.
    fn response(&self, as_json: bool) -> Response<ResponseBody> {
        let message = self.message();
        let mut response = if as_json {
            let body = match self.reason() {
                Some(reason) => {
                    serde_json::json!({ "error": message, "reason": reason }).to_string()
                }
                None => render::error_json(&message),
            };
            full(self.status(), "application/json", body)
        } else {
            full(
                self.status(),
                "text/plain; charset=utf-8",
                format!("{message}\n"),
            )
        };
        if let Self::Refused(r) = self
            && let Some(secs) = r.retry_after_secs()
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Starts or joins the trace of the request's connection.
fn start_trace(app: &App, ctx: &ConnCtx) -> Result<watch::Receiver<TraceSnapshot>, NoTrace> {
    let mut admitted = ctx.admitted.lock().unwrap_or_else(PoisonError::into_inner);
    if *admitted {
        // The tracer dedups per connection: this joins the running (or
        // finished) trace and is not a new trace for the limits.
        return app.tracer.trace(ctx.conn.clone()).map_err(NoTrace::Engine);
    }
    let permit = app
        .limiter
        .try_acquire(ctx.conn.peer.ip())
        .map_err(NoTrace::Refused)?;
    let rx = app
        .tracer
        .trace(ctx.conn.clone())
        .map_err(NoTrace::Engine)?;
    *admitted = true;
    // The permit counts against the limits while the trace runs; the trace
    // may outlive the request (and the connection), so a task holds it.
    let mut watcher = rx.clone();
    let timeout = app.trace_timeout;
    tokio::spawn(async move {
        let _permit = permit;
        let finished = watcher.wait_for(|s| s.done.is_some() || s.error.is_some());
        let _ = tokio::time::timeout(timeout, finished).await;
    });
    Ok(rx)
}

/// Routes one request. Never fails: errors become responses.
pub(crate) async fn handle<B>(
    app: Arc<App>,
    ctx: Arc<ConnCtx>,
    req: Request<B>,
) -> Response<ResponseBody> {
    let head = req.method() == Method::HEAD;
    let route = match req.uri().path() {
        "/" => "/",
        "/trace" => "/trace",
        "/trace.json" => "/trace.json",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let mut response = if req.method() != Method::GET && !head {
        let mut r = full(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    } else {
        match route {
            "/" if wants_html(req.headers()) => html_page(),
            // HEAD must not start a trace: answer with the headers only.
            "/" | "/trace" | "/trace.json" if head => head_only(route),
            "/" => text_table(&app, &ctx),
            "/trace" => event_stream(&app, &ctx),
            "/trace.json" => trace_json(&app, &ctx).await,
            "/healthz" => full(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
            "/metrics" => full(StatusCode::OK, metrics::CONTENT_TYPE, app.metrics.encode()),
            _ => full(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n",
            ),
        }
    };
    if route == "/" {
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Accept"));
    }
    app.metrics.request(route, response.status().as_u16());
    response
}

/// Whether the client prefers HTML (browsers list `text/html` in Accept;
/// curl sends `*/*`).
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim();
            let html = media.eq_ignore_ascii_case("text/html")
                || media.eq_ignore_ascii_case("application/xhtml+xml");
            // `q=0` means "not acceptable".
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            html && q > 0.0
        })
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn streaming_headers(response: &mut Response<ResponseBody>, content_type: &'static str) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx and friends: pass each event on at once.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

fn head_only(route: &str) -> Response<ResponseBody> {
    let content_type = match route {
        "/trace" => "text/event-stream",
        "/trace.json" => "application/json",
        _ => "text/plain; charset=utf-8",
    };
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    streaming_headers(&mut response, content_type);
    response
}

fn html_page() -> Response<ResponseBody> {
    let mut response = full(StatusCode::OK, "text/html; charset=utf-8", html::PAGE);
    let headers = response.headers_mut();
    // Inline script and style only; the page talks to this origin only.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn trace_json(app: &App, ctx: &ConnCtx) -> Response<ResponseBody> {
    let mut rx = match start_trace(app, ctx) {
        Ok(rx) => rx,
        Err(no) => return refused(app, &no, true),
    };
    let finished = rx.wait_for(|s| s.done.is_some() || s.error.is_some());
    let outcome = match tokio::time::timeout(app.trace_timeout, finished).await {
        Err(_) => Err((StatusCode::GATEWAY_TIMEOUT, "trace timed out".to_owned())),
        Ok(Err(_)) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "trace aborted".to_owned(),
        )),
        Ok(Ok(snapshot)) => match (&snapshot.done, &snapshot.error) {
            (Some(result), _) => Ok(render::json(result)),
            (None, error) => Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                error.clone().unwrap_or_default(),
            )),
        },
    };
    let mut response = match outcome {
        Ok(body) => full(StatusCode::OK, "application/json", body),
        Err((status, message)) => full(status, "application/json", render::error_json(&message)),
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn refused(app: &App, no: &NoTrace, as_json: bool) -> Response<ResponseBody> {
    if let Some(reason) = no.reason() {
        app.metrics.refused(reason);
    }
    no.response(as_json)
}

/// A body fed by a task through a channel: each message is sent (and
/// flushed) as its own frame. Dropping the body (client gone) closes the
/// channel, which stops the task.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// A streamed 200 response and the sender that feeds it.
fn stream_response(content_type: &'static str) -> (Response<ResponseBody>, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(32);
    let mut response = Response::new(ChannelBody(rx).boxed());
    streaming_headers(&mut response, content_type);
    (response, tx)
}

/// What a trace follower sees next.
enum Update {
    Snapshot(TraceSnapshot),
    Keepalive,
    Aborted,
    TimedOut,
}

/// Follows a trace's snapshots with keep-alive ticks and the trace timeout.
struct Follower {
    rx: watch::Receiver<TraceSnapshot>,
    deadline: tokio::time::Instant,
    fresh: bool,
}

impl Follower {
    fn new(rx: watch::Receiver<TraceSnapshot>, timeout: Duration) -> Self {
        Self {
            rx,
            deadline: tokio::time::Instant::now() + timeout,
            fresh: true,
        }
    }

    async fn next(&mut self) -> Update {
        if !self.fresh {
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return Update::Aborted;
                    }
                }
                () = tokio::time::sleep(KEEPALIVE) => return Update::Keepalive,
                () = tokio::time::sleep_until(self.deadline) => return Update::TimedOut,
            }
        }
        self.fresh = false;
        Update::Snapshot(self.rx.borrow_and_update().clone())
    }
}

fn event_stream(app: &App, ctx: &ConnCtx) -> Response<ResponseBody> {
    let rx = match start_trace(app, ctx) {
        Ok(rx) => rx,
        Err(no) => return refused(app, &no, false),
    };
    let (response, tx) = stream_response("text/event-stream");
    let mut follower = Follower::new(rx, app.trace_timeout);
    tokio::spawn(async move {
        let mut diff = render::HopDiff::default();
        // Opens the stream at once, before the first hop is known.
        if tx
            .send(Bytes::from_static(b": netray trace\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let chunk = match follower.next().await {
                Update::Keepalive => Bytes::from_static(b": keepalive\n\n"),
                Update::Aborted => render::sse_event("error", &render::error_json("trace aborted")),
                Update::TimedOut => {
                    render::sse_event("error", &render::error_json("trace timed out"))
                }
                Update::Snapshot(snapshot) => {
                    let mut out = Vec::new();
                    for hop in diff.changed(&snapshot.hops) {
                        out.extend_from_slice(&render::sse_event("hop", &render::json(hop)));
                    }
                    if let Some(result) = &snapshot.done {
                        // Hop events converge on the result's hops.
                        for hop in diff.changed(&result.hops) {
                            out.extend_from_slice(&render::sse_event("hop", &render::json(hop)));
                        }
                        out.extend_from_slice(&render::sse_event("done", &render::json(result)));
                    } else if let Some(error) = &snapshot.error {
                        out.extend_from_slice(&render::sse_event(
                            "error",
                            &render::error_json(error),
                        ));
                    }
                    if out.is_empty() {
                        continue;
                    }
                    let last = snapshot.done.is_some() || snapshot.error.is_some();
                    if tx.send(Bytes::from(out)).await.is_err() || last {
                        return;
                    }
                    continue;
                }
            };
            // Comments (keep-alives) go on; an error event ends the stream.
            let last = !chunk.starts_with(b":");
            if tx.send(chunk).await.is_err() || last {
                return;
            }
        }
    });
    response
}

fn text_table(app: &App, ctx: &ConnCtx) -> Response<ResponseBody> {
    let rx = match start_trace(app, ctx) {
        Ok(rx) => rx,
        Err(no) => return refused(app, &no, false),
    };
    let (response, tx) = stream_response("text/plain; charset=utf-8");
    let mut follower = Follower::new(rx, app.trace_timeout);
    let probes = app.probes;
    let header = render::text_header(ctx.conn.local, ctx.conn.peer);
    tokio::spawn(async move {
        if tx.send(Bytes::from(header)).await.is_err() {
            return;
        }
        // Hops are printed in TTL order, each once.
        let mut printed = 0usize;
        loop {
            let (out, last) = match follower.next().await {
                // Plain text has no comments: nothing to keep alive with.
                Update::Keepalive => continue,
                Update::Aborted => ("trace aborted\n".to_owned(), true),
                Update::TimedOut => ("trace timed out\n".to_owned(), true),
                Update::Snapshot(snapshot) => {
                    let mut out = String::new();
                    if let Some(result) = &snapshot.done {
                        for hop in result.hops.iter().skip(printed) {
                            out.push_str(&render::text_row(hop));
                        }
                        out.push_str(&render::text_summary(result));
                        (out, true)
                    } else if let Some(error) = &snapshot.error {
                        (format!("trace failed: {error}\n"), true)
                    } else {
                        while render::settled(&snapshot.hops, printed, probes) {
                            out.push_str(&render::text_row(&snapshot.hops[printed]));
                            printed += 1;
                        }
                        (out, false)
                    }
                }
            };
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
            if last {
                return;
            }
        }
    });
    response
}
