//! The owner's commands: `vigil init`, `receive`, `status`, `vault`, `spend`, `lockdown`,
//! `panic`.
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
use vigil_client::cosigner::ClientError;
use vigil_client::owner;
use vigil_client::session::Session;
use vigil_client::spending::{self, Progress};
use vigil_client::towers::TowerClient;
use vigil_client::vaulting::{self, VaultOrder};
use vigil_client::wallet::{replace_file, PendingVault, VaultRecord, WalletDir, WalletState};
use vigil_cosigner::wire::{self, Enrolled, PinPolicy};
use vigil_policy::bitcoin::consensus::encode::serialize_hex;
use vigil_policy::bitcoin::{Address, Amount};
use vigil_policy::draft::{DraftTower, PolicyDraft};
use vigil_policy::VaultKind;
use zeroize::Zeroizing;

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

/// `vigil init`.
#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// The network (regtest, signet, testnet4, bitcoin).
    #[arg(long, default_value = "regtest")]
    network: String,
    /// The node the wallet reads the chain from (Bitcoin Core's JSON-RPC, or `vigil node`).
    #[arg(long)]
    chain_url: String,
    /// The node's cookie file (or --chain-user and --chain-password).
    #[arg(long)]
    chain_cookie: Option<PathBuf>,
    /// The node's RPC user.
    #[arg(long)]
    chain_user: Option<String>,
    /// The node's RPC password.
    #[arg(long)]
    chain_password: Option<String>,
    /// The co-signer's URL.
    #[arg(long)]
    cosigner: String,
    /// The single-use token the co-signer's operator gave you.
    #[arg(long)]
    cosigner_token: String,
    /// A tower, as `NAME,URL,KEY,TOKEN` from its operator (repeat for each tower).
    #[arg(long = "tower", required = true)]
    towers: Vec<String>,
    /// A guardian's key, as `vigil guardian init` printed it (repeat for each guardian).
    #[arg(long = "guardian", required = true)]
    guardians: Vec<String>,
    /// How many guardians must approve.
    #[arg(long, default_value_t = 2)]
    guardians_needed: u32,
    /// Where alarms are e-mailed (repeat; the guardians' addresses).
    #[arg(long = "alarm-email")]
    alarm_emails: Vec<String>,
    /// DELAY: blocks a vault spend waits on chain, watched by the towers (144 = a day).
    #[arg(long, default_value_t = 144)]
    delay: u32,
    /// T_RECOVER: blocks before owner and guardians can act without the co-signer.
    #[arg(long, default_value_t = 4_320)]
    recovery: u32,
    /// LONG: blocks before the deep vault opens to the backup key and the guardians.
    #[arg(long, default_value_t = 8_640)]
    deep_vault: u32,
    /// The allowance wallet's ceiling, sats.
    #[arg(long, default_value_t = 2_000_000)]
    hot_limit: u64,
    /// The most vault spends may release per window without the guardians, sats.
    #[arg(long, default_value_t = 10_000_000)]
    velocity_limit: u64,
    /// The velocity window, blocks.
    #[arg(long, default_value_t = 1_008)]
    velocity_window: u32,
    /// Finish a setup that stopped half-way (after the co-signer enrolled the wallet).
    #[arg(long)]
    resume: bool,
    /// Skip the check that the phrases were written down (scripts, tests only).
    #[arg(long, hide = true)]
    no_phrase_check: bool,
}

/// `vigil vault`.
#[derive(Args)]
pub struct VaultArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// How much to put in the vault, in BTC (for example 0.05).
    amount: String,
    /// A guarded vault: spending it always needs the guardians (amounts above the velocity
    /// limit always go to one).
    #[arg(long)]
    guarded: bool,
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

const SETUP_FILE: &str = "setup.json";

fn say(line: &str) {
    eprintln!("{line}");
}

/// A line typed by the user (stdin).
fn ask(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = Zeroizing::new(String::new());
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
    let mut hidden = before;
    hidden.c_lflag &= !ECHO;
    hidden.c_lflag |= ECHONL;
    tcsetattr(fd, TCSANOW, &hidden)?;
    let answer = ask(prompt);
    tcsetattr(fd, TCSANOW, &before)?;
    answer
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

/// Shows a phrase once and checks two of its words were written down.
fn show_phrase(
    title: &str,
    warning: &str,
    phrase: &vigil_client::bip39::Mnemonic,
    check: bool,
) -> anyhow::Result<()> {
    let words: Vec<&str> = phrase.words().collect();
    say("");
    say(title);
    say(warning);
    for (i, chunk) in words.chunks(6).enumerate() {
        let line: Vec<String> =
            chunk.iter().enumerate().map(|(j, w)| format!("{:>2}. {w:<10}", i * 6 + j + 1)).collect();
        say(&format!("  {}", line.join(" ")));
    }
    say("");
    if !check {
        return Ok(());
    }
    use vigil_policy::bitcoin::secp256k1::rand::Rng;
    let mut rng = vigil_policy::bitcoin::secp256k1::rand::thread_rng();
    for _ in 0..2 {
        let n = rng.gen_range(0..words.len());
        let mut tries = 0;
        loop {
            let typed = ask(&format!("To check you wrote it down: what is word number {}? ", n + 1))?;
            if typed.trim().eq_ignore_ascii_case(words[n]) {
                break;
            }
            tries += 1;
            if tries == 3 {
                bail!("stopped: the words did not match your paper; nothing was created. Run `vigil init` again");
            }
            say("That is not it. Look at your paper again (the words are numbered).");
        }
    }
    Ok(())
}

fn parse_tower(text: &str) -> anyhow::Result<(DraftTower, String)> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let [name, url, key, token] = parts[..] else {
        bail!("--tower {text:?}: expected NAME,URL,KEY,TOKEN (four parts, as the tower's operator gave them)")
    };
    Ok((DraftTower { name: name.into(), url: url.into(), key: key.into() }, token.into()))
}

/// What a setup has done so far (`setup.json`), so an interrupted one can finish. Public
/// data and single-use tokens only: never the heartbeat tokens' hashes, which would tell the
/// two codes' slots apart.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Setup {
    cosigner_url: String,
    cosigner_token: String,
    /// The co-signer's answer to the token, once it came.
    enrolled: Option<Enrolled>,
    /// Tower name → token, for those not enrolled yet.
    tower_tokens: Vec<(String, String)>,
    alarm_emails: Vec<String>,
    pinned_at_cosigner: bool,
}

fn save_setup(dir: &WalletDir, setup: &Setup) -> anyhow::Result<()> {
    Ok(replace_file(&dir.file(SETUP_FILE), &serde_json::to_vec_pretty(setup)?)?)
}

fn enroll(setup: &mut Setup) -> anyhow::Result<Enrolled> {
    if let Some(e) = &setup.enrolled {
        return Ok(e.clone());
    }
    let enrolled: Enrolled = ureq::post(&format!("{}/v1/enroll", setup.cosigner_url))
        .timeout(std::time::Duration::from_secs(30))
        .send_json(json!({ "token": setup.cosigner_token }))
        .map_err(|e| match e {
            ureq::Error::Status(status, r) => anyhow::anyhow!(
                "the co-signer refused the token ({status}): {}; ask its operator for a new one",
                r.into_string().unwrap_or_default()
            ),
            other => anyhow::anyhow!(
                "the co-signer at {} cannot be reached: {other}; finish later with `vigil init --resume`",
                setup.cosigner_url
            ),
        })?
        .into_json()?;
    setup.enrolled = Some(enrolled.clone());
    Ok(enrolled)
}

/// `vigil init`.
pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let dir = args.wallet.dir();
    if args.resume {
        return finish_setup(&dir, args.wallet.json);
    }
    if owner::exists(&dir.path) {
        bail!(
            "there is already a wallet in {}: nothing was changed (use --wallet for another place)",
            dir.path.display()
        );
    }
    let network = crate::guardian::network(&args.network)?;
    let towers = args.towers.iter().map(|t| parse_tower(t)).collect::<anyhow::Result<Vec<_>>>()?;
    let chain = match (&args.chain_cookie, &args.chain_user, &args.chain_password) {
        (Some(cookie), None, None) => format!("cookie_file = {:?}", cookie.display().to_string()),
        (None, Some(user), Some(password)) => format!("user = {user:?}\npassword = {password:?}"),
        _ => bail!("give --chain-cookie, or --chain-user and --chain-password"),
    };
    let wallet_toml = format!(
        "# The owner's wallet: its network and the node it reads the chain from.\nnetwork = \"{network}\"\n\n[chain]\nurl = {:?}\n{chain}\n",
        args.chain_url
    );
    let config: vigil_client::wallet::WalletConfig =
        toml::from_str(&wallet_toml).context("the chain options")?;
    let chain = vigil_tower::daemon::backend(&config.chain);
    let birth =
        chain.tip().map_err(|e| anyhow::anyhow!("the node at {} cannot be reached: {e}", args.chain_url))?;

    say("Welcome to Vigil. This sets up your wallet in a few steps.");
    let owner_phrase = owner::new_phrase();
    show_phrase(
        "STEP 1 of 4. Your recovery phrase. Write these 24 words on paper, in order.",
        "With them you can rebuild this wallet if you lose this device. Anyone who has them AND your \
         guardians' help can move your savings: keep the paper safe.",
        &owner_phrase,
        !args.no_phrase_check,
    )?;
    let backup_phrase = owner::new_phrase();
    show_phrase(
        "STEP 2 of 4. Your BACKUP key's phrase. Write these 24 words on a second paper.",
        "KEEP THIS PAPER AWAY FROM HOME (a bank box, a lawyer, family abroad). It is never stored \
         on this device. With your guardians it opens the deep vault, where emergencies send \
         everything. Nobody can force it out of you at home if it is not there.",
        &backup_phrase,
        !args.no_phrase_check,
    )?;
    say("STEP 3 of 4. Your codes.");
    say("The unlock code opens this wallet. The DURESS code opens it too and looks exactly the same,");
    say("but it silently locks your savings and alerts your guardians. Use it if someone forces you.");
    let real_code = new_code("your unlock code")?;
    let duress_code = loop {
        let code = new_code("your duress code (different from the unlock code)")?;
        if *code != *real_code {
            break code;
        }
        say("The duress code must be different from the unlock code.");
    };

    say("STEP 4 of 4. Registering with your co-signer and watchtowers...");
    // Recorded before the token is used: an interruption from here on is finished with
    // `vigil init --resume`.
    std::fs::create_dir_all(&dir.path).with_context(|| format!("creating {}", dir.path.display()))?;
    let mut setup = Setup {
        cosigner_url: args.cosigner.trim_end_matches('/').to_owned(),
        cosigner_token: args.cosigner_token.clone(),
        enrolled: None,
        tower_tokens: towers.iter().map(|(t, token)| (t.name.clone(), token.clone())).collect(),
        alarm_emails: args.alarm_emails.clone(),
        pinned_at_cosigner: false,
    };
    save_setup(&dir, &setup)?;
    let enrolled = enroll(&mut setup)?;
    save_setup(&dir, &setup)?;
    let public = owner::public_keys(&owner_phrase, owner::backup_key(&backup_phrase, network), network);
    let draft = PolicyDraft {
        network: args.network.clone(),
        owner_key: public.owner_key.clone(),
        owner_auth_key: public.auth_key.clone(),
        backup_key: public.backup_key.clone(),
        cosigner_key: enrolled.cosigner_key.clone(),
        cosigner_url: setup.cosigner_url.clone(),
        guardian_keys: args.guardians.clone(),
        guardian_threshold: args.guardians_needed,
        delays: [args.delay, args.recovery, args.deep_vault],
        unvault_sat_per_vb: 2,
        ladder_sat_per_vb: vec![1, 2, 5, 10, 25, 50, 100, 250],
        max_fee_percent: 5,
        hot_limit_sat: args.hot_limit,
        velocity_limit_sat: args.velocity_limit,
        velocity_window_blocks: args.velocity_window,
        towers: towers.iter().map(|(t, _)| t.clone()).collect(),
    };
    let policy = draft.to_toml()?;
    replace_file(&dir.file("wallet.toml"), wallet_toml.as_bytes())?;
    replace_file(&dir.file("policy.toml"), policy.as_bytes())?;
    let state =
        WalletState { birth_height: birth.height, scanned_height: birth.height, ..WalletState::default() };
    dir.save_state(&state)?;
    let hashes = owner::create(
        &dir.path,
        &owner_phrase,
        real_code.as_bytes(),
        duress_code.as_bytes(),
        network,
        owner::KDF,
    )?;
    pin_everywhere(&dir, setup, &real_code, &hashes, args.wallet.json)
}

/// `vigil init --resume`: the heartbeat hashes are not kept, so both codes are asked again
/// if the co-signer has not pinned them yet.
fn finish_setup(dir: &WalletDir, json_out: bool) -> anyhow::Result<()> {
    let path = dir.file(SETUP_FILE);
    if !path.exists() {
        bail!("nothing to resume in {}: the setup is complete, or never started", dir.path.display());
    }
    let mut setup: Setup = serde_json::from_slice(&std::fs::read(&path)?).context("setup.json")?;
    if !owner::exists(&dir.path) {
        enroll(&mut setup)?;
        bail!(
            "the setup stopped before your keys were saved: remove {} and run `vigil init` again \
             (with a new co-signer token)",
            dir.path.display()
        );
    }
    let network = dir.config()?.network()?;
    let code = ask_code("Unlock code: ")?;
    let real = owner::unlock(&dir.path, code.as_bytes(), network)?;
    let duress_hash = if setup.pinned_at_cosigner {
        String::new()
    } else {
        let duress = ask_code("Duress code: ")?;
        let hash = owner::unlock(&dir.path, duress.as_bytes(), network)?.heartbeat_hash();
        if hash == real.heartbeat_hash() {
            bail!("that is the unlock code again; type the duress code");
        }
        hash
    };
    let hashes = owner::HeartbeatHashes { real: real.heartbeat_hash(), duress: duress_hash };
    pin_everywhere(dir, setup, &code, &hashes, json_out)
}

/// Pins the policy at the co-signer and every tower still missing it, recording each step.
fn pin_everywhere(
    dir: &WalletDir,
    mut setup: Setup,
    code: &str,
    hashes: &owner::HeartbeatHashes,
    json_out: bool,
) -> anyhow::Result<()> {
    let network = dir.config()?.network()?;
    let keys = owner::unlock(&dir.path, code.as_bytes(), network)?;
    let policy_text = dir.policy_text()?;
    let co = vigil_client::cosigner::CosignerClient::with_nonces(
        &policy_text,
        keys.auth_keypair(),
        vigil_client::cosigner::Nonces::new(dir.file("nonce")),
    )?;
    if !setup.pinned_at_cosigner {
        let pin = PinPolicy {
            token: setup.cosigner_token.clone(),
            policy: policy_text.clone(),
            heartbeat_real: hashes.real.clone(),
            heartbeat_duress: hashes.duress.clone(),
            alarm_emails: setup.alarm_emails.clone(),
        };
        let _: wire::PinAnswer =
            co.post("/v1/clients", &pin).map_err(|e| setup_stopped("the co-signer", e))?;
        setup.pinned_at_cosigner = true;
        save_setup(dir, &setup)?;
    }
    let compiled = dir.policy()?;
    let key = keys.auth_keypair();
    for tower in TowerClient::all(compiled.policy(), &key, co.nonces()) {
        let Some(pos) = setup.tower_tokens.iter().position(|(name, _)| *name == tower.name) else { continue };
        let req = vigil_tower::wire::EnrollClient {
            nonce: 0,
            token: setup.tower_tokens[pos].1.clone(),
            policy: policy_text.clone(),
        };
        let _: serde_json::Value = tower
            .post("/v1/clients", &req)
            .map_err(|e| setup_stopped(&format!("tower {}", tower.name), e))?;
        setup.tower_tokens.remove(pos);
        save_setup(dir, &setup)?;
    }
    std::fs::remove_file(dir.file(SETUP_FILE))?;
    let policy_id = vigil_tower::policy_id(&policy_text);
    let owner_key = compiled.policy().owner.keys[0].xpub.to_string();
    if json_out {
        println!("{}", json!({"wallet": dir.path, "policy_id": policy_id, "owner_key": owner_key}));
    } else {
        println!("Your wallet is ready in {}.", dir.path.display());
        println!(
            "Your policy is pinned at the co-signer and at {} watchtowers (id {policy_id}).",
            compiled.policy().towers.len()
        );
        println!(
            "Next: `vigil receive` for an address to send coins to, then `vigil vault` to protect them."
        );
    }
    Ok(())
}

fn setup_stopped(who: &str, e: ClientError) -> anyhow::Error {
    anyhow::anyhow!(
        "{who} did not take the policy: {e}. Your keys and policy are saved; once {who} is reachable, \
         finish with `vigil init --resume`"
    )
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
    Ok(session)
}

/// The owner's vault key, from the recovery phrase typed now (it is never stored).
fn vault_key(session: &Session) -> anyhow::Result<owner::VaultKey> {
    say("Signing for a vault needs your recovery phrase (the 24 words on your paper).");
    for attempt in 1..=3 {
        let typed = ask_code("Recovery phrase: ")?;
        let owner = &session.compiled.policy().owner.keys[0].xpub;
        match owner::parse_phrase(&typed)
            .and_then(|p| owner::VaultKey::from_phrase(&p, session.network, owner))
        {
            Ok(key) => return Ok(key),
            Err(e) if attempt < 3 => say(&format!("{e}. Try again.")),
            Err(e) => bail!("{e}; nothing was signed"),
        }
    }
    unreachable!("three attempts")
}

/// `vigil receive`.
pub fn receive(args: WalletArgs) -> anyhow::Result<()> {
    let session = open(&args)?;
    let mut state = session.dir.state()?;
    let index = state.next_intake;
    let address =
        Address::from_script(&session.compiled.intake_descriptor(index)?.script_pubkey(), session.network)?;
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
    let config = session.dir.config()?;
    let chain = vigil_tower::daemon::backend(&config.chain);
    let mut state = session.dir.state()?;
    let tip = state.scan(&session.compiled, &*chain)?;
    session.dir.save_state(&state)?;
    let intake: Vec<_> = state.coins.iter().filter(|c| !c.spent).collect();
    let intake_sat: u64 = intake.iter().map(|c| c.value_sat).sum();
    let key = session.keys.auth_keypair();
    let policy_id = session.cosigner.client_id().to_owned();
    let towers: Vec<(String, Result<serde_json::Value, ClientError>)> = session
        .towers(&key)
        .iter()
        .map(|t| (t.name.clone(), t.get(&format!("/v1/clients/{policy_id}"))))
        .collect();
    let vaults: Vec<serde_json::Value> = state
        .vaults
        .iter()
        .map(|v| {
            json!({
                "vault": v.outpoint.to_string(),
                "amount_sat": v.amount_sat,
                "kind": v.kind,
                "state": if v.confirmed_height.is_some() { "protected" } else { "funding sent" },
                "confirmed_height": v.confirmed_height,
            })
        })
        .collect();
    let vault_sat: u64 = state.vaults.iter().map(|v| v.amount_sat).sum();
    if args.json {
        let towers: Vec<_> = towers
            .iter()
            .map(|(name, r)| json!({"name": name, "reachable": r.is_ok(), "error": r.as_ref().err().map(|e| e.to_string())}))
            .collect();
        println!(
            "{}",
            json!({
                "height": tip,
                "cosigner_reachable": session.heartbeat.is_ok(),
                "intake_sat": intake_sat,
                "intake_coins": intake.len(),
                "vaults": vaults,
                "vault_sat": vault_sat,
                "towers": towers,
            })
        );
        return Ok(());
    }
    println!("Wallet {} ({}), at block {tip}", session.dir.path.display(), session.network);
    println!("Waiting to be vaulted: {} in {} coin(s)", btc(intake_sat), intake.len());
    println!("In vaults: {} in {} vault(s)", btc(vault_sat), state.vaults.len());
    for v in &vaults {
        println!(
            "  {} {} — {}",
            v["kind"].as_str().unwrap_or(""),
            btc(v["amount_sat"].as_u64().unwrap_or(0)),
            v["state"].as_str().unwrap_or("")
        );
    }
    println!("Co-signer: {}", if session.heartbeat.is_ok() { "reachable" } else { "NOT reachable" });
    for (name, r) in &towers {
        match r {
            Ok(_) => println!("Watchtower {name}: watching"),
            Err(e) => println!("Watchtower {name}: NOT reachable ({e})"),
        }
    }
    Ok(())
}

fn parse_btc(text: &str) -> anyhow::Result<Amount> {
    Amount::from_str_in(text.trim(), vigil_policy::bitcoin::Denomination::Bitcoin)
        .map_err(|e| anyhow::anyhow!("{text:?} is not an amount in BTC (for example 0.05): {e}"))
}

fn kind_name(kind: VaultKind) -> &'static str {
    if kind == VaultKind::Guarded {
        "guarded"
    } else {
        "standard"
    }
}

fn record_of(vault: &vigil_client::Vault) -> VaultRecord {
    VaultRecord {
        outpoint: vault.outpoint(),
        amount_sat: vault.plan.amount.to_sat(),
        kind: kind_name(vault.plan.kind).into(),
        index: vault.plan.index,
        funding: serialize_hex(&vault.funding),
        confirmed_height: None,
        unvault: serialize_hex(vault.graph.unvault()),
        owner_once: vault.plan.owner_once.to_string(),
        cosigner_once: vault.plan.cosigner_once.to_string(),
        unvaulted: false,
    }
}

/// A ceremony an interruption left between sending the owner's half and recording the vault:
/// the co-signer says whether it holds it. Returns the vault finished, or none (nothing was
/// funded: the record is dropped); refuses while the towers are still being told.
fn finish_pending(session: &Session, state: &mut WalletState) -> anyhow::Result<Option<vigil_client::Vault>> {
    let Some(p) = state.pending_vault.clone() else { return Ok(None) };
    let status: wire::VaultStatus = match session.cosigner.get(&format!("/v1/vaults/{}", p.outpoint)) {
        Ok(status) => status,
        Err(ClientError::Refused { status: 404, .. }) => {
            state.pending_vault = None;
            state.note(format!("the interrupted vault {} was never made: its coins are free", p.outpoint));
            return Ok(None);
        }
        Err(e) => {
            bail!("a vault interrupted earlier cannot be checked with the co-signer ({e}); nothing was done")
        }
    };
    if status.state != "protected" {
        bail!(
            "the vault interrupted earlier is still being registered with the watchtowers; try again later"
        );
    }
    let record = VaultRecord {
        outpoint: p.outpoint,
        amount_sat: p.amount_sat,
        kind: p.kind.clone(),
        index: p.index,
        funding: String::new(),
        confirmed_height: None,
        unvault: String::new(),
        owner_once: p.owner_once.clone(),
        cosigner_once: p.cosigner_once.clone(),
        unvaulted: false,
    };
    let plan = record.plan().context("the interrupted vault's record is damaged")?;
    let mine = vaulting::signatures_from_hex(plan.owner_once, &p.owner_signatures)?;
    let theirs = vaulting::signatures_from_hex(plan.cosigner_once, &p.cosigner_signatures)?;
    let unsigned = vigil_policy::bitcoin::consensus::encode::deserialize_hex(&p.unsigned_funding)?;
    let vault = vaulting::rebuild(&session.compiled, &plan, p.outpoint, &mine, &theirs, &status, &unsigned)?;
    state.vaults.push(record_of(&vault));
    state.pending_vault = None;
    state.note(format!("vault {} finished after an interruption", p.outpoint));
    Ok(Some(vault))
}

/// `vigil vault`: intake coins into a vault, in DESIGN §4's order; the funding is broadcast
/// last, once every tower holds the vault (the co-signer releases it only then). Each step is
/// recorded before the next, so a run killed anywhere is finished by the next.
pub fn vault(args: VaultArgs) -> anyhow::Result<()> {
    let amount = parse_btc(&args.amount)?;
    let session = open(&args.wallet)?;
    // Above the velocity limit a vault is guarded: its spends always need the guardians.
    let velocity_limit = Amount::from_sat(session.compiled.policy().allowance.velocity_limit_sat);
    let kind = if args.guarded || amount > velocity_limit { VaultKind::Guarded } else { VaultKind::Standard };
    let config = session.dir.config()?;
    let chain = vigil_tower::daemon::backend(&config.chain);
    let mut state = session.dir.state()?;
    if let Some(v) = finish_pending(&session, &mut state)? {
        session.dir.save_state(&state)?;
        say(&format!("Finished the vault of {} interrupted earlier.", btc(v.plan.amount.to_sat())));
    }
    session.dir.save_state(&state)?;
    state.scan(&session.compiled, &*chain)?;
    // Fundings recorded but not yet seen on chain are sent again (a crash after the record,
    // before the broadcast).
    let mut in_flight = Vec::new();
    for v in state.vaults.iter().filter(|v| v.confirmed_height.is_none()) {
        let tx: vigil_policy::bitcoin::Transaction =
            vigil_policy::bitcoin::consensus::encode::deserialize_hex(&v.funding)?;
        let _ = chain.broadcast(&tx);
        in_flight.extend(tx.input.iter().map(|i| i.previous_output));
    }
    // Coins a funding not yet confirmed spends are not offered again.
    let coins: Vec<_> = state
        .spendable_coins(&session.compiled)
        .into_iter()
        .filter(|c| !in_flight.contains(&c.outpoint))
        .collect();
    let min = session.compiled.min_vault_amount();
    if amount < min {
        bail!(
            "{} is below the smallest vault this policy can build ({}): nothing was done",
            btc(amount.to_sat()),
            btc(min.to_sat())
        );
    }
    // The coins, largest first, until they cover the amount and a fee margin. Coins of a
    // funding recorded but not yet confirmed are not offered again.
    let mut sorted = coins.clone();
    sorted.sort_by_key(|c| std::cmp::Reverse(c.txout.value));
    let margin = Amount::from_sat(5_000);
    let mut chosen = Vec::new();
    let mut total = Amount::ZERO;
    for c in sorted {
        if total >= amount + margin {
            break;
        }
        total += c.txout.value;
        chosen.push(c);
    }
    if total < amount + margin {
        bail!(
            "not enough coins waiting to be vaulted: {} available, {} needed with fees; nothing was done",
            btc(coins.iter().map(|c| c.txout.value.to_sat()).sum()),
            btc((amount + margin).to_sat())
        );
    }
    let index = state.next_vault;
    let change_index = state.next_intake;
    // Both indexes are taken before anything is signed: a crash never reuses them.
    state.next_vault += 1;
    state.next_intake += 1;
    session.dir.save_state(&state)?;
    say("Building the vault with your co-signer; every watchtower must confirm it holds it...");
    let order = VaultOrder {
        compiled: &session.compiled,
        coins: &chosen,
        index,
        change_index,
        amount,
        kind,
        funding_sat_per_vb: 2,
    };
    let key = vault_key(&session)?;
    let (once, begun) = vaulting::begin(&session.cosigner, &order)?;
    let sign = |psbt: &mut vigil_policy::bitcoin::psbt::Psbt| key.sign_psbt(psbt);
    let prepared = vaulting::prepare(&order, once, &begun, &sign)?;
    // Recorded before it is sent: if this run dies after the co-signer took it, the next one
    // finishes it (the one-time key is gone; its signatures are all that is needed).
    state.pending_vault = Some(PendingVault {
        outpoint: prepared.outpoint,
        index,
        amount_sat: amount.to_sat(),
        kind: kind_name(kind).into(),
        owner_once: prepared.plan.owner_once.to_string(),
        cosigner_once: prepared.plan.cosigner_once.to_string(),
        owner_signatures: vaulting::signatures_hex(&prepared.mine),
        cosigner_signatures: vaulting::signatures_hex(&prepared.theirs),
        unsigned_funding: serialize_hex(&prepared.funding.unsigned_tx),
    });
    session.dir.save_state(&state)?;
    let (status, vault) = vaulting::finish(&session.cosigner, &session.compiled, &prepared)?;
    if status.state != "protected" {
        let missing: Vec<_> =
            status.towers.iter().filter(|t| !t.acknowledged).map(|t| t.name.clone()).collect();
        bail!(
            "not every watchtower holds the vault yet ({} missing): its coins were NOT moved. The co-signer \
             keeps trying; run `vigil vault` again later to finish it",
            missing.join(", ")
        );
    }
    // Recorded before the broadcast: a crash in between sends it again next time.
    state.vaults.push(record_of(&vault));
    state.pending_vault = None;
    state.note(format!("vault {} of {} made", vault.outpoint(), btc(amount.to_sat())));
    session.dir.save_state(&state)?;
    chain.broadcast(&vault.funding).map_err(|e| {
        anyhow::anyhow!(
            "the funding was not broadcast ({e}); it is saved and sent again by the next `vigil vault`"
        )
    })?;
    let kind = kind_name(kind);
    if args.wallet.json {
        println!(
            "{}",
            json!({"vault": vault.outpoint().to_string(), "amount_sat": amount.to_sat(), "kind": kind, "state": "protected"})
        );
    } else {
        println!("Vault made: {} ({kind}), watched by {} towers.", btc(amount.to_sat()), status.towers.len());
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
    let most = vigil_tower::wire::MAX_LOCKDOWN_BLOCKS;
    if args.blocks == 0 || args.blocks > most {
        bail!("--blocks {}: a lockdown lasts 1 to {most} blocks (five weeks); nothing was done", args.blocks);
    }
    let session = open(&args.wallet)?;
    let co: Result<wire::LockdownStatus, _> =
        session.cosigner.post("/v1/lockdown", &wire::Lockdown { blocks: args.blocks, sweep });
    let key = session.keys.auth_keypair();
    let policy_id = session.cosigner.client_id().to_owned();
    let config = session.dir.config()?;
    let tip = vigil_tower::daemon::backend(&config.chain).tip().map(|t| t.height).ok();
    let mut reports = Vec::new();
    for tower in session.towers(&key) {
        let until = tip.map(|t| t.saturating_add(args.blocks)).unwrap_or(0);
        let req = vigil_tower::wire::LockdownRequest {
            nonce: 0,
            policy_id: policy_id.clone(),
            until_height: until,
            quiet: false,
        };
        let r: Result<serde_json::Value, _> = tower.post("/v1/lockdown", &req);
        reports.push((tower.name.clone(), r.err().map(|e| e.to_string())));
    }
    if args.wallet.json {
        println!(
            "{}",
            json!({
                "cosigner": co.as_ref().map(|s| s.until_height).map_err(|e| e.to_string()),
                "towers": reports.iter().map(|(n, e)| json!({"name": n, "error": e})).collect::<Vec<_>>(),
            })
        );
    } else {
        match &co {
            Ok(s) => {
                println!(
                    "Locked down until block {}: no vault can be spent, every unvault is cancelled.",
                    s.until_height
                );
                if sweep {
                    println!("Your guardians are alerted to sweep every vault to the deep vault.");
                }
            }
            Err(e) => println!("The co-signer did not take the lockdown: {e}"),
        }
        for (name, e) in &reports {
            match e {
                None => println!("Watchtower {name}: locked down"),
                Some(e) => println!("Watchtower {name}: NOT reached ({e})"),
            }
        }
    }
    if co.is_err() && reports.iter().all(|(_, e)| e.is_some()) {
        bail!("nobody took the lockdown: run the command again");
    }
    Ok(())
}

/// `vigil spend`.
#[derive(Args)]
pub struct SpendArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// Where to send (an address of the wallet's network).
    address: Option<String>,
    /// How much, in BTC (for example 0.05).
    amount: Option<String>,
    /// Continue the spends under way instead of starting one.
    #[arg(long)]
    resume: bool,
    /// Keep going until each spend is done or stopped, saying what it waits for.
    #[arg(long)]
    wait: bool,
}

fn describe(progress: &Progress, tip: u32) -> (String, serde_json::Value) {
    match progress {
        Progress::WaitingForGuardians { approvals, needed } => (
            format!("waiting for your guardians: {approvals} of {needed} approved"),
            json!({"stage": "waiting for guardians", "approvals": approvals, "needed": needed}),
        ),
        Progress::Waiting { from_height: Some(h) } => (
            format!(
                "approved; the coins are unlocking: spendable from block {h}, in about {} blocks (now {tip})",
                h.saturating_sub(tip)
            ),
            json!({"stage": "unlocking", "spendable_from_height": h, "height": tip}),
        ),
        Progress::Waiting { from_height: None } => (
            "approved; the unlocking transaction is on its way to a block".into(),
            json!({"stage": "unlocking", "spendable_from_height": null, "height": tip}),
        ),
        Progress::Sent { txid } => {
            (format!("sent: transaction {txid}, waiting for a block"), json!({"stage": "sent", "txid": txid}))
        }
        Progress::Done { txid } => {
            (format!("done: transaction {txid} confirmed"), json!({"stage": "done", "txid": txid}))
        }
        Progress::Denied => ("a guardian denied this spend".into(), json!({"stage": "denied"})),
        Progress::Stopped(why) => (format!("stopped: {why}"), json!({"stage": "stopped", "reason": why})),
    }
}

fn finished(p: &Progress) -> bool {
    matches!(p, Progress::Sent { .. } | Progress::Done { .. } | Progress::Denied | Progress::Stopped(_))
}

/// `vigil spend ADDRESS AMOUNT`, or `--resume`: a vault spend, step by step, resumable.
pub fn spend(args: SpendArgs) -> anyhow::Result<()> {
    // Bad input is refused before anything is asked or sent.
    let target = match (&args.address, &args.amount, args.resume) {
        (Some(address), Some(amount), false) => {
            let network = args.wallet.dir().config()?.network()?;
            let address = address
                .parse::<Address<_>>()
                .map_err(|e| anyhow::anyhow!("{address:?} is not a bitcoin address: {e}; nothing was done"))?
                .require_network(network)
                .map_err(|_| anyhow::anyhow!("{address} is an address of another network than this wallet's ({network}); nothing was done"))?;
            Some((address, parse_btc(amount)?))
        }
        (None, None, true) => None,
        _ => bail!("give an ADDRESS and an AMOUNT, or --resume"),
    };
    let session = open(&args.wallet)?;
    let chain = vigil_tower::daemon::backend(&session.dir.config()?.chain);
    let mut state = session.dir.state()?;
    state.scan(&session.compiled, &*chain)?;
    let positions: Vec<usize> = match target {
        Some((address, amount)) => {
            let key = vault_key(&session)?;
            let pos = spending::prepare(&session, &mut state, &key, &address, amount)?;
            // Recorded before it is sent: a lost answer is asked again with the same request.
            session.dir.save_state(&state)?;
            vec![pos]
        }
        None => (0..state.spends.len()).filter(|&i| state.spends[i].active()).collect(),
    };
    if positions.is_empty() {
        bail!("no spend is under way");
    }
    let mut answers = Vec::new();
    for pos in positions {
        let progress = loop {
            let progress = spending::advance(&session, &mut state, &*chain, pos);
            session.dir.save_state(&state)?;
            let progress = progress?;
            let tip = chain.tip().map(|t| t.height).unwrap_or(0);
            if !args.wait || finished(&progress) {
                break (progress, tip);
            }
            if !args.wallet.json {
                say(&format!("spend {}: {}", state.spends[pos].id, describe(&progress, tip).0));
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        };
        let id = state.spends[pos].id;
        let (text, value) = describe(&progress.0, progress.1);
        answers.push(json!({"id": id, "progress": value}));
        if !args.wallet.json {
            println!("Spend {id}: {text}");
        }
    }
    if args.wallet.json {
        println!("{}", serde_json::Value::from(answers));
    }
    Ok(())
}
