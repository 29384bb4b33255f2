//! The owner's commands: `vigil init`, `receive`, `status`, `vault`, `spend`, `lockdown`,
//! `panic`, `recover`.
//!
//! Written for a frightened, non-technical person: plain words, one question at a time, and
//! nothing half-done on a refusal. Every command that opens the wallet asks for the code and
//! says the same things whichever code it was: the code only chooses the keystore's slot
//! (`vigil_client::owner`), never a branch here. Prompts go to stderr, results to stdout
//! (`--json` for scripts).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use vigil_client::allowance::Allowance;
use vigil_client::cosigner::ClientError;
use vigil_client::owner;
use vigil_client::session::Session;
use vigil_client::spending::{self, Progress};
use vigil_client::towers::TowerClient;
use vigil_client::vaulting::{self, VaultOrder};
use vigil_client::wallet::{replace_file, PendingVault, VaultRecord, WalletDir, WalletState};
use vigil_cosigner::wire::{self, Enrolled, PinPolicy};
use vigil_policy::bitcoin::bip32::Xpub;
use vigil_policy::bitcoin::consensus::encode::serialize_hex;
use vigil_policy::bitcoin::{Address, Amount};
use vigil_policy::draft::{DraftTower, PolicyDraft};
use vigil_policy::VaultKind;
use zeroize::Zeroizing;

mod device;
mod recover;
mod setup;
mod vaults;

pub use device::{register, RegisterArgs};
pub use recover::{recover, RecoverArgs};
use setup::SETUP_FILE;
pub use setup::{init, InitArgs};
pub use vaults::{spend, vault, SpendArgs, VaultArgs};

/// Where the wallet is, and how to answer.
#[derive(Args, Clone)]
pub struct WalletArgs {
    /// The wallet's directory (default: $VIGIL_WALLET, else ~/.vigil/wallet).
    #[arg(long, global = true)]
    wallet: Option<PathBuf>,
    /// Print JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
}

impl WalletArgs {
    fn dir(&self) -> WalletDir {
        let path = self.wallet.clone().or_else(|| std::env::var_os("VIGIL_WALLET").map(PathBuf::from));
        WalletDir::new(path.unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".vigil").join("wallet")
        }))
    }
}

/// `vigil receive`.
#[derive(Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// An address of the allowance (everyday money, spendable at once) instead of one whose
    /// coins wait to be vaulted.
    #[arg(long)]
    allowance: bool,
    /// Also show the address (an intake's, or the allowance's) on the wallet's hardware
    /// signer, to compare: malware on this computer cannot change what the device shows.
    #[arg(long)]
    on_device: bool,
}

/// The allowance wallet of the session's wallet.
fn open_allowance(session: &Session, state: &WalletState) -> anyhow::Result<Allowance> {
    Ok(Allowance::of(session, state.birth_height)?)
}

/// Pays `amount` to `address` from the allowance if it covers it and the fee (signed on the
/// hardware signer when it holds the allowance, else with the keystore's key); `None` when it
/// cannot, with nothing done.
fn pay_from_allowance(
    session: &Session,
    allowance: &mut Allowance,
    chain: &dyn vigil_chain::ChainBackend,
    address: &Address,
    amount: Amount,
) -> anyhow::Result<Option<vigil_policy::bitcoin::Transaction>> {
    let paid = match session.dir.allowance_on_signer()? {
        Some(account) => match allowance.payment(chain, address, amount) {
            Ok(psbt) => {
                let signed = device::sign_allowance_payment(session, &account, &psbt, address, amount)?;
                allowance.send(signed, chain)
            }
            Err(e) => Err(e),
        },
        None => allowance.pay(session.keys.allowance(), chain, address, amount),
    };
    match paid {
        Ok(tx) => Ok(Some(tx)),
        Err(vigil_client::allowance::AllowanceError::Insufficient { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `vigil ui`.
#[derive(Args)]
pub struct UiArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    #[command(flatten)]
    listen: crate::ui::ListenArgs,
}

/// `vigil ui`: the owner's page; it unlocks with the wallet's code, in the page.
pub fn ui(args: UiArgs) -> anyhow::Result<()> {
    let dir = args.wallet.dir();
    if dir.file(SETUP_FILE).exists() {
        bail!("the setup of {} did not finish: run `vigil init --resume`", dir.path.display());
    }
    dir.config()?;
    crate::ui::serve(&args.listen, |gate| {
        Ok(std::sync::Arc::new(vigil_ui::owner::OwnerPage::new(dir, gate)).router())
    })
}

/// `vigil lockdown`.
#[derive(Args)]
pub struct LockdownArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// How long, in blocks (6 an hour; 144 a day).
    #[arg(long, default_value_t = 144)]
    blocks: u32,
}

/// `vigil enroll-tower`.
#[derive(Args)]
pub struct EnrollTowerArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// The watchtower's name in the policy.
    #[arg(long)]
    tower: String,
    /// The single-use token its operator gave you (`vigil tower token`).
    #[arg(long)]
    token: String,
}

/// `vigil enroll-tower`: a watchtower a policy change added takes the wallet's policy, and
/// the co-signer hands it every vault it must watch.
pub fn enroll_tower(args: EnrollTowerArgs) -> anyhow::Result<()> {
    let session = open(&args.wallet)?;
    let request = wire::EnrollTower { tower: args.tower.clone(), token: args.token.trim().to_owned() };
    let answer: wire::TowerEnrolled = session.cosigner.post("/v1/towers", &request)?;
    if args.wallet.json {
        println!("{}", serde_json::to_string(&answer)?);
    }
    let tower = &answer.tower;
    if !answer.enrolled {
        let error = answer.error.as_deref().unwrap_or("no answer");
        if error.contains("token") {
            bail!(
                "watchtower {tower} refused the token ({error}): ask its operator for a new one \
                 (`vigil tower token`), then run this again with it"
            );
        }
        bail!(
            "watchtower {tower} did not take your policy yet ({error}); the co-signer keeps trying. Run this \
             again later to see where it stands"
        );
    }
    if !args.wallet.json {
        println!(
            "Watchtower {tower} now serves your wallet: it is given {} vaults and {} approved spends.",
            answer.vaults, answer.approvals
        );
        if !answer.kept_elsewhere.is_empty() {
            println!(
                "{} vaults whose approved spend is under way stay with the watchtowers already watching them: \
                 {}",
                answer.kept_elsewhere.len(),
                answer.kept_elsewhere.join(", ")
            );
        }
        if !answer.complete {
            println!("Part of it has not reached {tower} yet: the co-signer keeps sending it until it has.");
        }
    }
    Ok(())
}

fn say(line: &str) {
    eprintln!("{line}");
}

/// A line typed by the user (stdin).
fn ask(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    // Room for any code or phrase at once: a string that grew would leave earlier copies
    // of it, unwiped, where it was.
    let mut line = Zeroizing::new(String::with_capacity(4096));
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        bail!("stopped: no answer to {:?}", prompt.trim());
    }
    Ok(Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned()))
}

/// A code: not echoed on a terminal; a plain line from a script. Echo goes off before the
/// prompt shows, so nothing typed at once after it is ever displayed.
fn ask_code(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    use std::os::fd::AsRawFd;
    use termios::{tcsetattr, Termios, ECHO, ECHONL, TCSANOW};
    if !std::io::stdin().is_terminal() {
        return ask(prompt);
    }
    let fd = std::io::stdin().as_raw_fd();
    let before = Termios::from_fd(fd)?;
    restore_terminal_on_interrupt(fd, before)?;
    let mut hidden = before;
    hidden.c_lflag &= !ECHO;
    hidden.c_lflag |= ECHONL;
    tcsetattr(fd, TCSANOW, &hidden)?;
    let answer = ask(prompt);
    tcsetattr(fd, TCSANOW, &before)?;
    answer
}

/// From the first hidden prompt on, Ctrl-C (or a hang-up or terminate) puts the terminal back
/// as it was before exiting, so an interrupted prompt never leaves the shell typing blind.
fn restore_terminal_on_interrupt(fd: i32, before: termios::Termios) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    static WATCHING: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if WATCHING.get().is_some() {
        return Ok(());
    }
    let (ready, registered) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return drop(ready.send(Err(e))),
        };
        let interrupted = runtime.block_on(async move {
            let kinds = [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()];
            let mut streams = match kinds.map(signal).into_iter().collect::<Result<Vec<_>, _>>() {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return false;
                }
            };
            let _ = ready.send(Ok(()));
            let [a, b, c] = &mut streams[..] else { unreachable!("three signals") };
            tokio::select! { _ = a.recv() => {}, _ = b.recv() => {}, _ = c.recv() => {} }
            true
        });
        if !interrupted {
            return;
        }
        let _ = termios::tcsetattr(fd, termios::TCSANOW, &before);
        eprintln!();
        std::process::exit(130);
    });
    registered.recv()??;
    let _ = WATCHING.set(());
    Ok(())
}

fn new_code(what: &str) -> anyhow::Result<Zeroizing<String>> {
    for _ in 0..3 {
        let code = ask_code(&format!("Choose {what}: "))?;
        if code.chars().count() < 4 {
            say("That is too short: use at least 4 characters (longer is safer if the device is stolen).");
            continue;
        }
        if *ask_code("Type it again: ")? == *code {
            return Ok(code);
        }
        say("The two did not match. Let's try again.");
    }
    bail!("stopped: the codes did not match; nothing was created")
}

/// Unlocks, saying only what any unlock says.
fn open(args: &WalletArgs) -> anyhow::Result<Session> {
    let dir = args.dir();
    if dir.file(SETUP_FILE).exists() {
        bail!("the setup of {} did not finish: run `vigil init --resume`", dir.path.display());
    }
    let code = ask_code("Unlock code: ")?;
    let session = Session::open(&dir, code.as_bytes())?;
    if let Err(e) = &session.heartbeat {
        say(&format!("Note: the co-signer cannot be reached right now ({e}); working offline."));
    }
    if let Some(warning) = &session.policies.warning {
        say(&format!("WARNING: {warning}"));
    }
    Ok(session)
}

/// Refuses `what` (it builds from the policy that applies now) while the wallet cannot
/// follow its policy's changes: it could hand out an address of a version since replaced.
fn needs_current_policy(session: &Session, what: &str) -> anyhow::Result<()> {
    if session.policies.degraded {
        bail!("{what} waits until this wallet can follow its policy's changes again (see the warning above); nothing was done");
    }
    Ok(())
}

/// The owner's vault key, from the recovery phrase typed now (it is never stored).
fn vault_key(session: &Session) -> anyhow::Result<owner::VaultKey> {
    if device::has_signer(&session.dir)? {
        // Every command that signs with the vault key goes to the device instead.
        bail!("this wallet's vault key is on your Ledger, not in a phrase: this step signs on the device; nothing was signed");
    }
    let owner = &session.current().policy().owner;
    if owner.threshold > 1 {
        // One phrase signs here; the others' signatures come through a PSBT.
        bail!(
            "this policy needs {} of the owner's {} keys to sign, and this device holds one: use \
             --sign-elsewhere FILE and have each key sign the PSBT before handing it back; nothing was signed",
            owner.threshold,
            owner.keys.len()
        );
    }
    say("Signing for a vault needs your recovery phrase (the 24 words on your paper).");
    let owner = session.current().policy().owner.keys[0].xpub;
    Ok(phrase_key(session, "Recovery phrase: ", &[owner])?.0)
}

/// The off-site backup key (the deep vault's), from its phrase typed now, and the policy key
/// it is: today's, or one an earlier version named (what was swept under that version is in
/// that version's deep vault).
fn backup_key(session: &Session) -> anyhow::Result<(owner::VaultKey, Xpub)> {
    say("The deep vault needs your off-site backup phrase (not the everyday one). If your backup key is on a \
         Ledger, stop here and run the same command with --backup-signer ledger.");
    let mut named: Vec<Xpub> = Vec::new();
    for compiled in session.policies.known() {
        let backup = compiled.policy().backup.xpub;
        if !named.contains(&backup) {
            named.push(backup);
        }
    }
    phrase_key(session, "Backup phrase: ", &named)
}

/// The key of the phrase typed at `prompt`, and which of the policy's `expected` keys it is
/// (the first is said wrong when it is none).
fn phrase_key(session: &Session, prompt: &str, expected: &[Xpub]) -> anyhow::Result<(owner::VaultKey, Xpub)> {
    for attempt in 1..=3 {
        let typed = ask_code(prompt)?;
        let found = owner::parse_phrase(&typed).and_then(|p| {
            let mut wrong = None;
            for xpub in expected {
                match owner::VaultKey::from_phrase(&p, session.network, xpub) {
                    Ok(key) => return Ok((key, *xpub)),
                    Err(e) => {
                        wrong.get_or_insert(e);
                    }
                }
            }
            Err(wrong.expect("a policy names the key"))
        });
        match found {
            Ok(key) => return Ok(key),
            Err(e) if attempt < 3 => say(&format!("{e}. Try again.")),
            Err(e) => bail!("{e}; nothing was signed"),
        }
    }
    unreachable!("three attempts")
}

/// `vigil receive`.
pub fn receive(args: ReceiveArgs) -> anyhow::Result<()> {
    let session = open(&args.wallet)?;
    let mut state = session.dir.state()?;
    if args.allowance {
        let mut allowance = open_allowance(&session, &state)?;
        allowance.sync(&*session.chain())?;
        let limit = session.current().policy().allowance.hot_limit_sat;
        let held = allowance.balance();
        if held.confirmed_sat + held.pending_sat >= limit {
            bail!(
                "your allowance already holds {} (its limit is {}): keep the rest in vaults; nothing was done",
                btc(held.confirmed_sat + held.pending_sat),
                btc(limit)
            );
        }
        if args.on_device {
            let Some(account) = session.dir.allowance_on_signer()? else {
                bail!("this wallet's allowance key is its recovery phrase, not a device: there is no device to show it on");
            };
            // Before it is handed out: an address the device did not confirm is not.
            let (index, next) = allowance.next_address();
            device::show_allowance_address(&session, &account, index, &next)?;
        }
        let address = allowance.address()?;
        if args.wallet.json {
            println!("{}", json!({"address": address.to_string(), "limit_sat": limit}));
        } else {
            println!("Send everyday money to: {address}");
            println!("It is spendable at once, so keep it small: at most {}.", btc(limit));
        }
        return Ok(());
    }
    let on_device = args.on_device;
    let args = args.wallet;
    needs_current_policy(&session, "A receive address")?;
    let index = state.next_intake;
    let address =
        Address::from_script(&session.current().intake_descriptor(index)?.script_pubkey(), session.network)?;
    if on_device {
        if !device::has_signer(&session.dir)? {
            bail!("this wallet's vault key is its recovery phrase, not a device: there is no device to show it on");
        }
        // Before the index is taken: an address the device did not confirm is not handed out.
        device::show_intake_address(&session, index, &address)?;
    }
    state.next_intake += 1;
    state.note(format!("receive address {index} handed out"));
    session.dir.save_state(&state)?;
    if args.json {
        println!("{}", json!({"address": address.to_string(), "index": index}));
    } else {
        println!("Send coins to: {address}");
        println!("Once they confirm, protect them with `vigil vault`.");
    }
    Ok(())
}

fn btc(sat: u64) -> String {
    format!("{} BTC", Amount::from_sat(sat).to_btc())
}

/// `vigil status`.
pub fn status(args: WalletArgs) -> anyhow::Result<()> {
    let session = open(&args)?;
    let o = vigil_client::overview::read(&session)?;
    let tip = o.height;
    if args.json {
        let vaults: Vec<serde_json::Value> = o
            .vaults
            .iter()
            .map(|v| {
                json!({
                    "vault": v.outpoint,
                    "amount_sat": v.amount_sat,
                    "kind": v.kind,
                    "state": v.place.name(),
                    "confirmed_height": v.confirmed_height,
                    "policy_version": v.policy_version,
                    "delay": v.delay,
                })
            })
            .collect();
        let spends: Vec<serde_json::Value> = o
            .spends
            .iter()
            .map(|sp| json!({"id": sp.id, "amount_sat": sp.amount_sat, "destination": sp.destination, "stage": sp.stage}))
            .collect();
        let towers: Vec<_> = o
            .towers
            .iter()
            .map(|(name, r)| json!({"name": name, "reachable": r.is_ok(), "error": r.as_ref().err()}))
            .collect();
        println!(
            "{}",
            json!({
                "height": tip,
                "cosigner_reachable": o.cosigner_reachable,
                "allowance_sat": o.allowance.as_ref().ok().map(|h| h.confirmed_sat),
                "allowance_pending_sat": o.allowance.as_ref().ok().map(|h| h.pending_sat),
                "allowance_error": o.allowance.as_ref().err(),
                "allowance_limit_sat": o.allowance_limit_sat,
                "intake_sat": o.intake_sat,
                "intake_coins": o.intake_coins,
                "vaults": vaults,
                "vault_sat": o.vault_sat,
                "deep_vault_sat": o.deep_vault_sat,
                "cancelled_sat": o.cancelled_sat,
                "spends": spends,
                "locked_down_until": o.locked_until.max(o.towers_locked_until),
                "locked_down_by_others_until": o.towers_locked_until,
                "towers": towers,
                "policy_version": o.policy_version,
                "policy_waiting": o.policy_waiting.map(|(version, height)| json!({"version": version, "height": height})),
                "policy_warning": o.policy_warning,
            })
        );
        return Ok(());
    }
    println!("Wallet {} ({}), at block {tip}", session.dir.path.display(), session.network);
    match &o.allowance {
        Ok(held) => {
            println!("Allowance (spendable at once): {}", btc(held.confirmed_sat));
            if held.pending_sat > 0 {
                println!("  and {} not yet confirmed", btc(held.pending_sat));
            }
            if held.confirmed_sat + held.pending_sat > o.allowance_limit_sat {
                println!(
                    "  That is above its limit of {}: keep the rest in vaults.",
                    btc(o.allowance_limit_sat)
                );
            }
        }
        Err(e) => println!("Allowance: cannot be read right now ({e})"),
    }
    println!("Waiting to be vaulted: {} in {} coin(s)", btc(o.intake_sat), o.intake_coins);
    println!("In vaults: {}", btc(o.vault_sat));
    for v in &o.vaults {
        println!("  {} {} — {}", v.kind, btc(v.amount_sat), v.place.name());
    }
    if o.cancelled_sat > 0 {
        println!("Cancelled, in your recovery output: {}", btc(o.cancelled_sat));
    }
    if o.deep_vault_sat > 0 {
        println!(
            "In the deep vault: {} (your backup key and the guardians return it)",
            btc(o.deep_vault_sat)
        );
    }
    for sp in &o.spends {
        println!(
            "Spend {} of {} to {}: {} (`vigil spend --resume` carries on)",
            sp.id,
            btc(sp.amount_sat),
            sp.destination,
            sp.stage
        );
    }
    if let Some(h) = o.locked_until {
        println!("Locked down by you until block {h}: vault spends are refused.");
    }
    if let Some(h) = o.towers_locked_until {
        println!("Locked down until block {h} (set by your guardians or by you elsewhere): vault spends are refused.");
    }
    match o.policy_waiting {
        Some((version, at)) => println!(
            "Policy: version {} (version {version}, signed by your guardians, applies at block {at})",
            o.policy_version
        ),
        None => println!("Policy: version {}", o.policy_version),
    }
    println!("Co-signer: {}", if o.cosigner_reachable { "reachable" } else { "NOT reachable" });
    for (name, r) in &o.towers {
        match r {
            Ok(()) => println!("Watchtower {name}: watching"),
            Err(e) => println!("Watchtower {name}: NOT reachable ({e})"),
        }
    }
    Ok(())
}

/// `text` as an address of the wallet in `wallet`'s network, or an error naming the problem.
fn parse_address(wallet: &WalletArgs, text: &str) -> anyhow::Result<Address> {
    address_on(wallet.dir().config()?.network()?, text)
}

/// `text` as an address of `network`, or why not.
fn address_on(network: vigil_policy::bitcoin::Network, text: &str) -> anyhow::Result<Address> {
    text.parse::<Address<_>>()
        .map_err(|e| anyhow::anyhow!("{text:?} is not a bitcoin address: {e}; nothing was done"))?
        .require_network(network)
        .map_err(|_| {
            anyhow::anyhow!(
                "{text} is an address of another network than this wallet's ({network}); nothing was done"
            )
        })
}

fn parse_btc(text: &str) -> anyhow::Result<Amount> {
    Amount::from_str_in(text.trim(), vigil_policy::bitcoin::Denomination::Bitcoin)
        .map_err(|e| anyhow::anyhow!("{text:?} is not an amount in BTC (for example 0.05): {e}"))
}

/// A lockdown's length every service takes (the co-signer's limit is the shorter): a length
/// only the towers took could never be lifted by the guardians through the co-signer.
pub(crate) fn check_lockdown_blocks(blocks: u32) -> anyhow::Result<()> {
    let most = vigil_cosigner::service::MAX_LOCKDOWN_BLOCKS.min(vigil_tower::wire::MAX_LOCKDOWN_BLOCKS);
    if blocks == 0 || blocks > most {
        bail!("--blocks {blocks}: a lockdown lasts 1 to {most} blocks (four weeks); nothing was done");
    }
    Ok(())
}

/// `vigil panic`: a lockdown now, and the guardians asked to sweep every vault to the deep
/// vault (only their quorum can sign that).
pub fn panic(args: LockdownArgs) -> anyhow::Result<()> {
    freeze(args, true)
}

/// `vigil lockdown`: freezes every spend at the co-signer and every tower at once.
pub fn lockdown(args: LockdownArgs) -> anyhow::Result<()> {
    freeze(args, false)
}

fn freeze(args: LockdownArgs, sweep: bool) -> anyhow::Result<()> {
    check_lockdown_blocks(args.blocks)?;
    let session = open(&args.wallet)?;
    let report = session.lock_down(args.blocks, sweep)?;
    if args.wallet.json {
        println!(
            "{}",
            json!({
                "cosigner": report.cosigner,
                "towers": report.towers.iter().map(|(n, e)| json!({"name": n, "error": e})).collect::<Vec<_>>(),
            })
        );
    } else {
        match &report.cosigner {
            Ok(until) => {
                println!(
                    "Locked down until block {until}: no vault can be spent, every unvault is cancelled."
                );
                if sweep {
                    println!("Your guardians are alerted to sweep every vault to the deep vault.");
                }
            }
            Err(e) => println!("The co-signer did not take the lockdown: {e}"),
        }
        for (name, e) in &report.towers {
            match e {
                None => println!("Watchtower {name}: locked down"),
                Some(e) => println!("Watchtower {name}: NOT reached ({e})"),
            }
        }
    }
    if report.nobody_took_it() {
        bail!("nobody took the lockdown: run the command again");
    }
    Ok(())
}
