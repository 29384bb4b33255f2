//! `vigil ui` and `vigil guardian ui`: the web pages, served on loopback until Ctrl-C. The
//! address to open (with this start's token) is printed once, on stdout.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use vigil_ui::Gate;

/// Where the page listens.
#[derive(Args, Clone)]
pub struct ListenArgs {
    /// A loopback address and port (port 0: any free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// Binds, prints the address to open, and serves `app(gate)` until Ctrl-C.
pub fn serve(
    listen: &ListenArgs,
    app: impl FnOnce(Arc<Gate>) -> anyhow::Result<axum::Router>,
) -> anyhow::Result<()> {
    let listener = vigil_ui::bind(listen.listen)?;
    let gate = Arc::new(Gate::new(listener.local_addr()?));
    let router = app(gate.clone())?;
    println!(
        "Open this address in your browser on this computer (it changes each time; Ctrl-C stops the page):"
    );
    println!("{}", gate.login_url());
    std::io::stdout().flush()?;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    vigil_ui::serve(listener, gate, router, stop)?;
    Ok(())
}
