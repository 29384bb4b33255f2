//! The owner's and the guardians' web pages: `vigil ui` and `vigil guardian ui` serve them on
//! loopback, to the browser of the person at this machine (docs/adr/0007-web-pages.md).
//!
//! The keys stay in this process: the browser is only the screen. Pages are rendered here as
//! plain HTML with one style sheet and no script, so nothing runs in the page that an attacker
//! could subvert, and nothing needs a build step. [`gate`] keeps other local users and other
//! sites from driving them.

// Libraries log through `tracing`; printing is for binaries.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod gate;
pub mod guardian;
pub mod owner;
pub mod page;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub use gate::Gate;

/// Why the page could not be served.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// Only loopback addresses are served.
    #[error("{0} is not a loopback address: the page is served to this machine only (use 127.0.0.1)")]
    NotLoopback(SocketAddr),
    /// The socket.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The server.
    #[error("the page's server stopped: {0}")]
    Serve(std::io::Error),
}

/// A loopback socket for the page.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, UiError> {
    if !addr.ip().is_loopback() {
        return Err(UiError::NotLoopback(addr));
    }
    TcpListener::bind(addr).map_err(|e| UiError::Listen(addr, e))
}

/// Serves `app` behind `gate` on `listener` until the process ends (or `shutdown` resolves).
pub fn serve(
    listener: TcpListener,
    gate: Arc<Gate>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), UiError> {
    use tower_layer::Layer;
    let app = app
        .route("/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], page::STYLE) }))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, Html(page::bare("Not found", "<p><a href=\"/\">Back</a></p>")))
        });
    // Around the router, not a layer of it (a layer runs after routing): the gate strips the
    // secret path before the router sees it.
    let app = axum::middleware::from_fn_with_state(gate, gate::guard).layer(app);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(UiError::Serve)?;
    runtime.block_on(async move {
        listener.set_nonblocking(true).map_err(UiError::Serve)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(UiError::Serve)?;
        let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(UiError::Serve)
    })
}

/// Runs `work` (which blocks: keys, HTTP to the services) off the server's threads.
pub(crate) async fn blocking(work: impl FnOnce() -> Response + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "a page's handler panicked");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(page::bare("Something went wrong", "<p>Nothing was done. <a href=\"/\">Back</a></p>")),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page behind the gate, on a real socket: the secret path, the single-use login, the
    /// cookie, and the page's own links mounted under the path.
    #[test]
    fn pages_live_under_the_secret_path_behind_a_single_use_login() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let gate = Arc::new(Gate::new(listener.local_addr().unwrap()));
        let login = gate.login_url();
        let app = Router::new().route("/", get(|| async { Html("<a href=\"/next\">next</a>") }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            serve(listener, gate, app, async {
                let _ = stopped.await;
            })
        });
        let agent = ureq::AgentBuilder::new().redirects(0).build();
        let status = |r: Result<ureq::Response, ureq::Error>| match r {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{e}"),
        };
        let base = login.split("/login").next().unwrap().to_owned();
        let site = base.rsplit_once('/').unwrap().0.to_owned();
        let answer = agent.get(&login).call().unwrap();
        assert_eq!(answer.status(), 303);
        let secret = &base[site.len()..];
        assert_eq!(answer.header("location"), Some(format!("{secret}/").as_str()));
        let cookie = answer.header("set-cookie").unwrap().to_owned();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(cookie.contains(&format!("Path={secret}/")), "{cookie}");
        let cookie = cookie.split(';').next().unwrap().to_owned();
        assert_eq!(status(agent.get(&format!("{base}/style.css")).set("cookie", &cookie).call()), 200);
        let page = agent.get(&format!("{base}/")).set("cookie", &cookie).call().unwrap();
        assert_eq!(page.header("content-security-policy"), Some(gate::CONTENT_SECURITY_POLICY));
        assert_eq!(page.into_string().unwrap(), format!("<a href=\"{secret}/next\">next</a>"));
        assert_eq!(status(agent.get(&format!("{base}/")).call()), 403, "no cookie");
        assert_eq!(status(agent.get(&format!("{site}/")).set("cookie", &cookie).call()), 404, "no path");
        assert_eq!(status(agent.get(&login).call()), 403, "a second login");
        stop.send(()).unwrap();
        server.join().unwrap().unwrap();
    }
}
