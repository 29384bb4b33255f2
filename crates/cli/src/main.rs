//! `vigil`: the command line. Thin: parsing and printing; the work is in the library crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vigil_policy::bitcoin::Amount;
use vigil_policy::example::ExamplePolicy;
use vigil_policy::{CompiledPolicy, Policy, PolicyError};

mod demo;
mod drill;
mod guardian;
mod owner;
mod signer;
mod ui;

#[derive(Parser)]
#[command(name = "vigil", version, about = "Coercion-resistant Bitcoin custody")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set up the owner's wallet: recovery phrases, unlock and duress codes, the co-signer,
    /// the watchtowers and the guardians.
    Init(Box<owner::InitArgs>),
    /// A fresh address to receive coins on (they wait there until vaulted), or with
    /// `--allowance` one of the everyday wallet.
    Receive(owner::ReceiveArgs),
    /// What the wallet holds: coins waiting, vaults, and whether the services answer.
    Status(owner::WalletArgs),
    /// Move received coins into a vault (its spends wait on chain, watched by the towers).
    Vault(owner::VaultArgs),
    /// Send from a vault: the request, the guardians' approvals when needed, the on-chain
    /// wait the towers watch, then the payment. `--resume` continues where it stopped.
    Spend(owner::SpendArgs),
    /// Freeze every vault now: spends are refused and every unvault is cancelled.
    Lockdown(owner::LockdownArgs),
    /// Freeze every vault now and ask the guardians to sweep them all to the deep vault.
    Panic(owner::LockdownArgs),
    /// Enroll your wallet at a watchtower a policy change added, with the token its operator
    /// gave you; the co-signer hands it every vault it must watch.
    EnrollTower(owner::EnrollTowerArgs),
    /// When the co-signer is gone for good: move the coins with your guardians through the
    /// recovery leaves, which open T_RECOVER blocks after each coin confirmed.
    Recover(owner::RecoverArgs),
    /// Your wallet in your browser: balances, vaults, spends and lockdown, served on this
    /// computer only.
    Ui(owner::UiArgs),
    /// Hardware signers: which are connected, and what each needs before it can sign.
    Signer(signer::SignerArgs),
    /// Work with custody policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Run the embedded regtest chain as a node speaking Bitcoin Core's JSON-RPC on loopback.
    Node {
        /// The chain's data directory.
        #[arg(long)]
        datadir: PathBuf,
        /// The RPC port (Core's regtest default).
        #[arg(long, default_value_t = 18443)]
        rpcport: u16,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        rpcbind: std::net::IpAddr,
        /// RPC user (with --rpcpassword; with neither, the node writes `<datadir>/.cookie`).
        #[arg(long)]
        rpcuser: Option<String>,
        /// RPC password (never empty).
        #[arg(long)]
        rpcpassword: Option<String>,
        /// Publish Core's `hashblock` ZMQ notifications here (`tcp://127.0.0.1:28332`).
        #[arg(long)]
        zmqpubhashblock: Option<String>,
        /// Publish `hashtx` notifications here.
        #[arg(long)]
        zmqpubhashtx: Option<String>,
        /// Publish `rawblock` notifications here.
        #[arg(long)]
        zmqpubrawblock: Option<String>,
        /// Publish `rawtx` notifications here.
        #[arg(long)]
        zmqpubrawtx: Option<String>,
        /// Publish `sequence` notifications here.
        #[arg(long)]
        zmqpubsequence: Option<String>,
    },
    /// Run a watchtower: watch registered vaults, cancel every unapproved unvault.
    Tower {
        /// The tower's configuration file (TOML).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<TowerCommand>,
    },
    /// Run the co-signer (the policy server outside the household), or set it up.
    Cosigner {
        /// The co-signer's configuration file (TOML).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<CosignerCommand>,
    },
    /// What a guardian runs: review and approve or deny spends, lock down, panic, sign policy
    /// changes.
    Guardian(guardian::GuardianArgs),
    /// The coercion drill: the chain, a co-signer, three towers and households started here
    /// as real processes, attacked scenario by scenario; prints what each attacker got and
    /// how fast the guardians knew, and writes an HTML report.
    Drill(drill::DrillArgs),
    /// Build vaults on the embedded regtest chain and walk them through their graph:
    /// unvault -> cancel, unvault -> delayed spend, emergency -> deep vault.
    Demo {
        /// The chain's data directory (kept between runs).
        #[arg(long, default_value = "vigil-demo-chain")]
        datadir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TowerCommand {
    /// Issue a single-use enrollment token: a client pins its policy with it (POST /v1/clients).
    Token,
}

#[derive(Subcommand)]
enum CosignerCommand {
    /// Create the co-signer's master key, sealed in `key_file` under the configured passphrase.
    Init,
    /// Issue a single-use enrollment token for one new client.
    Token,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file and print its descriptors and the graph's shape.
    Check {
        /// The policy file (TOML).
        file: PathBuf,
    },
    /// Print the example regtest policy (format 1 is examples/policy.toml).
    Example {
        /// The policy format: 1, or 2 for owner keys on a hardware signer (ADR 0005).
        #[arg(long, default_value_t = 1)]
        format: u32,
    },
    /// Print each output an owner's (or the backup's) hardware signer signs for, as the
    /// BIP-388 wallet policy the device registers (format 2 policies only).
    Wallets {
        /// The policy file (TOML).
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr, `info` and up unless RUST_LOG says otherwise; output for people to stdout.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match cli.command {
        Command::Policy { command: PolicyCommand::Check { file } } => policy_check(&file),
        Command::Policy { command: PolicyCommand::Example { format } } => {
            print!("{}", ExamplePolicy { format, ..ExamplePolicy::default() }.to_toml());
            Ok(())
        }
        Command::Policy { command: PolicyCommand::Wallets { file, json } } => policy_wallets(&file, json),
        Command::Demo { datadir } => demo::run(&datadir),
        Command::Signer(args) => signer::run(args),
        Command::Drill(args) => drill::run(args),
        Command::Init(args) => owner::init(*args),
        Command::Receive(args) => owner::receive(args),
        Command::Status(args) => owner::status(args),
        Command::Ui(args) => owner::ui(args),
        Command::Vault(args) => owner::vault(args),
        Command::Lockdown(args) => owner::lockdown(args),
        Command::Spend(args) => owner::spend(args),
        Command::Panic(args) => owner::panic(args),
        Command::Recover(args) => owner::recover(args),
        Command::EnrollTower(args) => owner::enroll_tower(args),
        Command::Tower { config, command } => tower(config.as_deref(), command),
        Command::Guardian(args) => guardian::run(args),
        Command::Cosigner { config, command } => cosigner(config.as_deref(), command),
        Command::Node {
            datadir,
            rpcport,
            rpcbind,
            rpcuser,
            rpcpassword,
            zmqpubhashblock,
            zmqpubhashtx,
            zmqpubrawblock,
            zmqpubrawtx,
            zmqpubsequence,
        } => node(vigil_node::NodeConfig {
            datadir,
            bind: std::net::SocketAddr::new(rpcbind, rpcport),
            rpcuser,
            rpcpassword,
            zmq: vigil_node::ZmqConfig {
                hashblock: zmqpubhashblock,
                hashtx: zmqpubhashtx,
                rawblock: zmqpubrawblock,
                rawtx: zmqpubrawtx,
                sequence: zmqpubsequence,
            },
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Bad input (a policy the user can fix) is 2; anything else 1.
            if e.downcast_ref::<PolicyError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn node(config: vigil_node::NodeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(vigil_node::run(config)).map_err(|e| anyhow::anyhow!("{e}"))
}

fn tower(config: Option<&Path>, command: Option<TowerCommand>) -> anyhow::Result<()> {
    let config = vigil_tower::load_config(config.context("--config FILE: the tower's configuration")?)?;
    match command {
        None => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(vigil_tower::run(config))?;
        }
        Some(TowerCommand::Token) => println!("{}", vigil_tower::governance::issue_token(&config)?),
    }
    Ok(())
}

fn cosigner(config: Option<&Path>, command: Option<CosignerCommand>) -> anyhow::Result<()> {
    let path = config.context("--config FILE: the co-signer's configuration")?;
    let config = vigil_cosigner::CosignerConfig::load(path)?;
    match command {
        None => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(vigil_cosigner::run(config))?;
        }
        Some(CosignerCommand::Init) => {
            let passphrase = vigil_keystore::read_passphrase(
                config.passphrase_file.as_deref(),
                config.passphrase_env.as_deref(),
            )?;
            let keys = vigil_cosigner::MasterKey::create(
                &config.key_file,
                passphrase.as_bytes(),
                config.network()?,
                vigil_keystore::KdfParams::INTERACTIVE,
            )?;
            println!(
                "co-signer key {} created in {} (sealed; keep the passphrase apart from it)",
                keys.fingerprint(),
                config.key_file.display()
            );
        }
        Some(CosignerCommand::Token) => {
            std::fs::create_dir_all(&config.datadir)?;
            let store = vigil_cosigner::open_store(&config)?;
            let token = vigil_cosigner::Cosigner::issue_token(&*store)?;
            println!("{token}");
        }
    }
    Ok(())
}

fn load_policy(file: &Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(Policy::from_toml(&text)?)
}

fn policy_wallets(file: &Path, json: bool) -> anyhow::Result<()> {
    let compiled = CompiledPolicy::new(load_policy(file)?)?;
    let wallets = compiled.wallet_policies()?;
    let unspendable = vigil_policy::nums_xpub(compiled.policy()).to_string();
    if json {
        let list: Vec<_> = wallets
            .iter()
            .map(|w| {
                serde_json::json!({
                    "name": w.name,
                    "template": w.template,
                    "keys": w.keys,
                    "per_vault": w.per_vault(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "BIP-388 wallet policies of {} (register each on the device that holds one of its keys):",
        file.display()
    );
    for w in &wallets {
        println!();
        println!(
            "{}{}",
            w.name,
            if w.per_vault() { " (registered per vault: OO and CO are its one-time keys)" } else { "" }
        );
        println!("  {}", w.template);
        for (i, key) in w.keys.iter().enumerate() {
            let note = if *key == unspendable { "  (unspendable: the device shows a dummy key)" } else { "" };
            println!("  @{i} {key}{note}");
        }
    }
    println!();
    println!("The allowance is the device's standard taproot account (tr(@0/**)): it needs no registration.");
    Ok(())
}

fn policy_check(file: &Path) -> anyhow::Result<()> {
    let policy = load_policy(file)?;
    let compiled = CompiledPolicy::new(policy.clone())?;
    let d = compiled.ranged_descriptors()?;
    let p = &policy;
    println!(
        "policy {} is valid (version {}, format {}, {})",
        file.display(),
        p.version,
        p.format as u32,
        p.network
    );
    println!();
    println!(
        "owner      {} of {} keys; backup key for the deep vault only",
        p.owner.threshold,
        p.owner.keys.len()
    );
    println!("guardians  {} of {}", p.guardians.threshold, p.guardians.keys.len());
    println!("co-signer  {}", p.cosigner_url.as_deref().unwrap_or("(no url)"));
    println!(
        "towers     {}",
        p.towers.iter().map(|t| format!("{} at {}", t.name, t.url)).collect::<Vec<_>>().join(", ")
    );
    println!();
    println!("descriptors (taproot; importable into Bitcoin Core):");
    println!("  intake      {}", d.intake);
    println!("  recovery    {}", d.recovery);
    println!("  deep vault  {}", d.deep_vault);
    println!("per-vault templates (OO/CO are each vault's one-time keys):");
    println!("  vault             {}", d.vault_template);
    println!("  unvault standard  {}", d.unvault_standard_template);
    println!("  unvault guarded   {}", d.unvault_guarded_template);
    println!();
    println!("graph:");
    println!("  intake --funding--> V (owner_once + cosigner_once)");
    println!(
        "  V --U--> unvault output; its spend leaf opens {} blocks after U confirms (DELAY)",
        p.delays.unvault
    );
    println!("  U --C--> recovery R   (any time; towers broadcast it for an unapproved U)");
    println!("  V --E--> deep vault, U --UE--> deep vault   (panic)");
    println!(
        "  recovery leaves (owner + guardians, no co-signer) open after {} blocks (T_RECOVER)",
        p.delays.recovery
    );
    println!("  deep vault: backup + {} guardians after {} blocks (LONG), or backup + co-signer + all guardians at once", p.guardians.threshold, p.delays.deep_vault);
    println!();
    println!("fees:");
    println!("  U: {} sat/vB, one version, a pay-to-anchor output for CPFP", p.fees.unvault_sat_per_vb);
    println!(
        "  C, E, UE: TRUC (v3) + pay-to-anchor, ladder {:?} sat/vB, rungs above {}% of the vault not signed",
        p.fees.ladder_sat_per_vb, p.fees.max_fee_percent
    );
    println!("  smallest vault this policy can build: {}", compiled.min_vault_amount());
    println!(
        "  standard vaults up to the velocity limit {} per {} blocks; larger vaults are guarded",
        Amount::from_sat(p.allowance.velocity_limit_sat),
        p.allowance.velocity_window_blocks
    );
    Ok(())
}
