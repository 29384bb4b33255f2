//! `vigil signer`: the hardware signers connected, and what each one needs before it can sign.

use std::net::SocketAddr;

use clap::{Args, Subcommand};
use vigil_policy::bitcoin::Network;

/// `vigil signer …`.
#[derive(Args)]
pub struct SignerArgs {
    #[command(subcommand)]
    command: SignerCommand,
}

#[derive(Subcommand)]
enum SignerCommand {
    /// Name the devices connected (kind, model, app and version, key fingerprint), and say
    /// what to do when one is locked, has another app open, or the other network's app.
    List {
        /// The network of the wallet the device is for.
        #[arg(long, default_value = "regtest")]
        network: Network,
        /// Also ask the Ledger emulator listening here (tests and demos).
        #[arg(long, value_name = "HOST:PORT")]
        emulator: Option<SocketAddr>,
        /// One JSON array, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Register on the wallet's device the accounts it signs for (its intake and recovery
    /// outputs), showing each on its screen to approve; kept with the wallet.
    Register(crate::owner::RegisterArgs),
}

pub fn run(args: SignerArgs) -> anyhow::Result<()> {
    match args.command {
        SignerCommand::Register(args) => crate::owner::register(args),
        SignerCommand::List { network, emulator, json } => {
            let found = vigil_signer::list(network, emulator);
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else if found.is_empty() {
                println!(
                    "No hardware signer found. Connect your device with its cable, unlock it with its PIN and open the \"{}\" app.",
                    vigil_signer::app_for(network)
                );
            } else {
                for device in &found {
                    println!("{}", device.describe());
                }
            }
            Ok(())
        }
    }
}
