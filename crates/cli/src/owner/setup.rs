//! `vigil init`: phrases, codes, enrollment at the co-signer and the towers, and the policy
//! pinned everywhere; resumable.

use super::*;

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
    /// --chain-url is an Electrum server's `host:port` (electrs, Fulcrum) instead of a node.
    #[arg(long, conflicts_with_all = ["chain_cookie", "chain_user", "chain_password"])]
    electrum: bool,
    /// The co-signer's URL.
    #[arg(long, required_unless_present = "restore", default_value = "")]
    cosigner: String,
    /// The single-use token the co-signer's operator gave you.
    #[arg(long, required_unless_present = "restore", default_value = "")]
    cosigner_token: String,
    /// A tower, as `NAME,URL,KEY,TOKEN` from its operator (repeat for each tower).
    #[arg(long = "tower", required_unless_present = "restore")]
    towers: Vec<String>,
    /// A guardian's key, as `vigil guardian init` printed it (repeat for each guardian).
    #[arg(long = "guardian", required_unless_present = "restore")]
    guardians: Vec<String>,
    /// How many guardians must approve.
    #[arg(long, default_value_t = 2)]
    guardians_needed: u32,
    /// Where alarms are e-mailed (repeat; the guardians' addresses, never one the owner reads:
    /// the duress alarm goes there too, and would show on a device a captor holds).
    #[arg(long = "alarm-email")]
    alarm_emails: Vec<String>,
    /// Where alarms are posted as JSON (repeat; the guardians' webhooks, https; never a chat
    /// or feed the owner reads, for the same reason).
    #[arg(long = "alarm-webhook")]
    alarm_webhooks: Vec<String>,
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
    /// Rebuild a lost device's wallet from the recovery phrase and the pinned policy: a copy
    /// (every guardian holds one), or, with no file, the co-signer's (give --cosigner URL).
    /// The co-signer gives back the vaults' records.
    #[arg(long, value_name = "POLICY_FILE", num_args = 0..=1, conflicts_with = "resume")]
    restore: Option<Option<PathBuf>>,
    /// With --restore: the block to scan for your coins from (0: the whole chain).
    #[arg(long, default_value_t = 0, requires = "restore")]
    from_height: u32,
    /// Keep the vault key on a hardware signer (`ledger`): the policy takes the device's key,
    /// in format 2 so the device can register each output (ADR 0005).
    #[arg(long, value_parser = ["ledger"])]
    signer: Option<String>,
    /// The Ledger is the emulator listening here (tests and demos), not a device on USB.
    #[arg(long, value_name = "HOST:PORT", requires = "signer")]
    signer_emulator: Option<std::net::SocketAddr>,
    /// Keep the off-site backup key (the deep vault's) on a second hardware signer (`ledger`),
    /// set up with its own words, instead of a phrase on paper; connect it when asked.
    #[arg(long, value_parser = ["ledger"], requires = "signer")]
    backup_signer: Option<String>,
    /// The backup's Ledger is the emulator listening here (tests and demos), not one on USB.
    #[arg(long, value_name = "HOST:PORT", requires = "backup_signer")]
    backup_signer_emulator: Option<std::net::SocketAddr>,
    /// Skip the check that the phrases were written down (scripts, tests only).
    #[arg(long, hide = true)]
    no_phrase_check: bool,
}

pub(super) const SETUP_FILE: &str = "setup.json";

/// `wallet.toml` from the chain options, the node's client, and its tip (checked reachable).
fn chain_options(
    args: &InitArgs,
    network: vigil_policy::bitcoin::Network,
) -> anyhow::Result<(String, Box<dyn vigil_chain::ChainBackend>, vigil_chain::BlockId)> {
    let chain = match (&args.chain_cookie, &args.chain_user, &args.chain_password) {
        _ if args.electrum => "kind = \"electrum\"".to_owned(),
        (Some(cookie), None, None) => format!("cookie_file = {:?}", cookie.display().to_string()),
        (None, Some(user), Some(password)) => format!("user = {user:?}\npassword = {password:?}"),
        _ => bail!("give --chain-cookie, or --chain-user and --chain-password (or --electrum)"),
    };
    let wallet_toml = format!(
        "# The owner's wallet: its network and the node it reads the chain from.\nnetwork = \"{network}\"\n\n[chain]\nurl = {:?}\n{chain}\n",
        args.chain_url
    );
    let config: vigil_client::wallet::WalletConfig =
        toml::from_str(&wallet_toml).context("the chain options")?;
    let backend = vigil_tower::daemon::backend(&config.chain);
    let tip = backend
        .tip()
        .map_err(|e| anyhow::anyhow!("the node at {} cannot be reached: {e}", args.chain_url))?;
    Ok((wallet_toml, backend, tip))
}

/// The unlock code and a different duress code, each typed twice.
fn new_codes() -> anyhow::Result<(Zeroizing<String>, Zeroizing<String>)> {
    let real_code = new_code("your unlock code")?;
    loop {
        let code = new_code("your duress code (different from the unlock code)")?;
        if *code != *real_code {
            return Ok((real_code, code));
        }
        say("The duress code must be different from the unlock code.");
    }
}

/// The policy id's first 16 hex characters, in groups of four: written on paper at setup,
/// asked at restore, so that a policy copy changed by whoever kept it (another co-signer,
/// other guardians, another backup key) is refused.
fn short_id(policy_id: &str) -> String {
    let hex: Vec<char> = policy_id.chars().take(16).collect();
    hex.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-")
}

/// `vigil init --restore [POLICY]`: the policy from a copy or the co-signer, checked against
/// the id written at setup; the keystore made anew from the phrase (new codes, new
/// heartbeat tokens, which the co-signer takes in place of the lost device's and alarms the
/// guardians about), the vaults from the co-signer's records, the coins from the chain.
fn restore(args: &InitArgs, policy_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let dir = args.wallet.dir();
    say("This rebuilds your wallet from your recovery phrase and its policy.");
    let typed = ask("The policy id written with your phrase (16 characters): ")?;
    let typed: String =
        typed.chars().filter(char::is_ascii_hexdigit).collect::<String>().to_ascii_lowercase();
    if typed.len() != 16 {
        bail!("the policy id written at setup has 16 characters, 0-9 and a-f (you typed {}); nothing was changed", typed.len());
    }
    let ask_phrase = |check: &dyn Fn(&owner::Phrase) -> Result<(), owner::OwnerKeyError>| loop {
        let words = ask_code("Recovery phrase: ")?;
        match owner::parse_phrase(&words).and_then(|p| check(&p).map(|()| p)) {
            Ok(p) => break anyhow::Ok(p),
            Err(e) => say(&format!("{e}. Try again (Ctrl-C stops).")),
        }
    };
    // From a copy, or from the co-signer, found by the phrase's request key (so the phrase
    // is asked first there).
    let (policy_text, fetched_phrase) = match policy_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading the policy copy {}", file.display()))?;
            (text, None)
        }
        None => {
            if args.cosigner.is_empty() {
                bail!("--restore without a policy file asks the co-signer for it: give --cosigner URL; nothing was changed");
            }
            let network = crate::guardian::network(&args.network)?;
            let phrase = ask_phrase(&|_| Ok(()))?;
            let key = owner::auth_keypair(&phrase, network);
            let fetched =
                vigil_client::cosigner::fetch_policy(&args.cosigner, &typed, &key).map_err(|e| {
                    anyhow::anyhow!("the co-signer did not give the policy: {e}; nothing was changed")
                })?;
            (fetched.policy, Some(phrase))
        }
    };
    let compiled = vigil_policy::CompiledPolicy::new(vigil_policy::Policy::from_toml(&policy_text)?)?;
    let policy = compiled.policy();
    let network = policy.network;
    let (wallet_toml, chain, _) = chain_options(args, network)?;
    let expected = short_id(&vigil_tower::policy_id(&policy_text));
    if typed != expected.replace('-', "") {
        let whose = if fetched_phrase.is_some() { "the co-signer's" } else { "this copy" };
        bail!(
            "{whose} policy is not the one you set up (its id begins {expected}): it may have been changed; \
             ask a guardian for their copy; nothing was changed"
        );
    }
    let owner_xpub = &policy.owner.keys[0].xpub;
    // With the vault key on a device, the device must hold it, and the phrase is checked by the
    // request key it makes (below) instead.
    let device = match &args.signer {
        Some(_) => {
            let ledger = super::device::connect(args.signer_emulator, network)?;
            let (key, record) = super::device::owner_key(&ledger, network, args.signer_emulator)?;
            if !key.ends_with(&owner_xpub.to_string()) {
                bail!("this Ledger does not hold this wallet's vault key: connect the wallet's own device; nothing was changed");
            }
            Some(record)
        }
        None => None,
    };
    let is_owner = |p: &owner::Phrase| match device {
        Some(_)
            if owner::public_keys(p, String::new(), network).auth_key
                == policy.owner.keys[0].auth_key().to_string() =>
        {
            Ok(())
        }
        Some(_) => Err(owner::OwnerKeyError::Phrase(
            "this is not the recovery phrase of this wallet (check the words and their order)".into(),
        )),
        None => owner::VaultKey::from_phrase(p, network, owner_xpub).map(drop),
    };
    let phrase = match fetched_phrase {
        Some(phrase) => {
            is_owner(&phrase)?;
            phrase
        }
        None => ask_phrase(&is_owner)?,
    };
    let public = owner::public_keys(&phrase, String::new(), network);
    if public.auth_key != policy.owner.keys[0].auth_key().to_string() {
        bail!("this policy names another request key for the owner than this phrase's; nothing was changed");
    }
    say("Choose new codes for this device (the old device's unlock code stops counting).");
    let (real_code, duress_code) = new_codes()?;
    // Built beside it and moved into place at the end: a restore killed half-way leaves no
    // half-made wallet, only this directory, cleared by the next attempt.
    let target = dir.clone();
    if target.path.exists() && std::fs::read_dir(&target.path)?.next().is_some() {
        bail!("{} is not empty: nothing was changed (use --wallet for another place)", target.path.display());
    }
    let dir = WalletDir::new(target.path.with_extension("restoring"));
    let _ = std::fs::remove_dir_all(&dir.path);
    vigil_client::wallet::create_private_dir(&dir.path)?;
    let (cosigner_took, answer_lost) = (std::cell::Cell::new(false), std::cell::Cell::new(false));
    let made = (|| -> anyhow::Result<u32> {
        replace_file(&dir.file("wallet.toml"), wallet_toml.as_bytes())?;
        replace_file(&dir.file("policy.toml"), policy_text.as_bytes())?;
        if let Some(record) = &device {
            record.save(&dir)?;
        }
        let hashes = owner::create(
            &dir.path,
            &phrase,
            real_code.as_bytes(),
            duress_code.as_bytes(),
            network,
            owner::KDF,
        )?;
        let keys = owner::unlock(&dir.path, real_code.as_bytes(), network)?;
        let co = vigil_client::cosigner::CosignerClient::with_nonces(
            &policy_text,
            keys.auth_keypair(),
            vigil_client::cosigner::Nonces::new(dir.file("nonce")),
        )?;
        let restored: wire::Restored = co
            .post(
                "/v1/restore",
                &wire::Restore {
                    heartbeat_real: hashes.real.clone(),
                    heartbeat_duress: hashes.duress.clone(),
                },
            )
            .inspect_err(|e| {
                // Only a refusal, or a failure before sending, surely took nothing: an answer
                // lost on the way back may follow the co-signer's commit.
                let took_nothing = matches!(e, ClientError::Refused { status: 400..=499, .. })
                    || matches!(e, ClientError::Policy(_) | ClientError::Nonce(..));
                answer_lost.set(!took_nothing);
            })?;
        cosigner_took.set(true);
        let mut state = WalletState {
            birth_height: args.from_height,
            scanned_height: args.from_height.saturating_sub(1),
            ..WalletState::default()
        };
        // The policy changes since, so that each vault keeps its own version's scripts.
        let served = co.get::<wire::PolicyChanges>("/v1/policy/changes").map_err(|e| e.to_string());
        let (record, _, warning) = vigil_client::policies::checked_record(&policy_text, None, Some(served));
        if let Some(warning) = &warning {
            say(&format!("WARNING: {warning}"));
        }
        let policies = vigil_client::policies::Policies::from_record(&policy_text, record.as_ref())
            .map_err(|e| anyhow::anyhow!("the co-signer's record of policy changes: {e}"))?;
        state.policy_changes = record;
        for v in &restored.vaults {
            state.next_vault = state.next_vault.max(v.vault.index + 1);
            let Some(funding) = v.funding.clone().filter(|_| v.state == "protected") else { continue };
            let mut record = VaultRecord {
                outpoint: v.vault.vault_outpoint.parse().context("the co-signer's vault record")?,
                amount_sat: v.vault.amount_sat,
                kind: v.vault.kind.clone(),
                index: v.vault.index,
                funding,
                confirmed_height: None,
                unvault: v.unvault.clone(),
                owner_once: v.vault.owner_once.clone(),
                cosigner_once: v.vault.cosigner_once.clone(),
                // Taken only if each is the extended key of its one-time key at this index.
                once_xpubs: v.once_xpubs.clone().filter(|xpubs| {
                    let ok = |xpub: &str, key: &str| {
                        let xpub = xpub.parse::<vigil_policy::bitcoin::bip32::Xpub>();
                        let key = key.parse::<vigil_policy::bitcoin::key::XOnlyPublicKey>();
                        matches!((xpub, key), (Ok(x), Ok(k)) if vigil_policy::is_vault_child(&x, v.vault.index, k))
                    };
                    ok(&xpubs[0], &v.vault.owner_once) && ok(&xpubs[1], &v.vault.cosigner_once)
                }),
                unvaulted: false,
                policy_version: None,
            };
            // Its version is the one whose vault output the funding pays: found, not taken on
            // the co-signer's word.
            match restored_version(&policies, &record) {
                Some(version) => record.policy_version = Some(version),
                None => {
                    say(&format!(
                        "WARNING: the co-signer's record of vault {} matches no policy version this wallet \
                         knows; it is left out (the co-signer keeps it). Tell your guardians",
                        record.outpoint
                    ));
                    continue;
                }
            }
            state.vaults.push(record);
        }
        state.scan(&policies, &*chain)?;
        for v in state.vaults.iter_mut().filter(|v| v.confirmed_height.is_some()) {
            // Spent already (unvaulted or swept): not offered for a spend.
            v.unvaulted = chain.unspent_output(&v.outpoint)?.is_none();
        }
        state.note(format!(
            "wallet restored: {} vault(s), {} coin(s) found",
            state.vaults.len(),
            state.coins.len()
        ));
        dir.save_state(&state)?;
        // The device holds the allowance when it holds the vault key.
        let allowance = device.as_ref().and_then(|r| r.allowance.clone()).unwrap_or(public.allowance_key);
        vigil_client::allowance::Allowance::open(&dir, &allowance, network, args.from_height)?
            .sync(&*chain)?;
        Ok(restored.restore)
    })();
    let made = made.and_then(|restore| {
        let _ = std::fs::remove_dir(&target.path);
        std::fs::rename(&dir.path, &target.path).context("moving the restored wallet into place")?;
        Ok(restore)
    });
    let restore = match made {
        Ok(restore) => restore,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir.path);
            if cosigner_took.get() {
                bail!(
                    "the wallet was not restored: {e}. The co-signer already took this attempt's codes, so the old \
                     device's no longer count: run the restore again"
                );
            }
            if answer_lost.get() {
                bail!(
                    "the wallet was not restored: {e}. The co-signer may have taken this attempt's codes (its answer \
                     did not come back), and then the old device's no longer count: run the restore again"
                );
            }
            bail!("the wallet was not restored: {e}; nothing was changed");
        }
    };
    let dir = target;
    let state = dir.state()?;
    if args.wallet.json {
        println!(
            "{}",
            json!({"restored": true, "restore": restore, "vaults": state.vaults.len(), "coins": state.coins.len()})
        );
    } else {
        // A co-signer of an earlier release names no number.
        let number = if restore == 0 {
            "Tell them yourself that you restored it (this co-signer does not number restores).".to_owned()
        } else {
            format!("Tell them yourself that this is restore number {restore}: they confirm only that one.")
        };
        println!(
            "Your wallet is back: {} vault(s) and {} coin(s) found. Your guardians were told of the restore; until \
             they confirm it, every vault spend waits for them. {number}",
            state.vaults.len(),
            state.coins.len()
        );
    }
    Ok(())
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
    #[serde(default)]
    alarm_webhooks: Vec<String>,
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
    if let Some(policy) = &args.restore {
        if args.backup_signer.is_some() {
            bail!(
                "a restore does not need the backup's device: keep it away from home. If the deep vault is \
                 ever needed, `vigil recover --deep-vault --backup-signer ledger` finds it; nothing was changed"
            );
        }
        return restore(&args, policy.as_deref());
    }
    let network = crate::guardian::network(&args.network)?;
    let towers = args.towers.iter().map(|t| parse_tower(t)).collect::<anyhow::Result<Vec<_>>>()?;
    let (wallet_toml, chain, birth) = chain_options(&args, network)?;

    say("Welcome to Vigil. This sets up your wallet in a few steps.");
    // The device first: nothing is made if it is not there.
    let device = match &args.signer {
        Some(_) => {
            let ledger = super::device::connect(args.signer_emulator, network)?;
            say("Your vault key and your allowance stay on your Ledger; this computer holds only the key that signs requests.");
            Some(super::device::owner_key(&ledger, network, args.signer_emulator)?)
        }
        None => None,
    };
    let backup_device = match (&args.backup_signer, &device) {
        (Some(_), Some((_, everyday))) => {
            say("Now your BACKUP key's device: a second Ledger, set up with its own 24 words, that you keep away from home.");
            if args.backup_signer_emulator.is_none() {
                ask("Unplug your everyday Ledger, connect the backup one and open its Bitcoin app, then press Enter: ")?;
            }
            let ledger = super::device::connect(args.backup_signer_emulator, network)?;
            Some(super::device::backup_key(&ledger, network, args.backup_signer_emulator, everyday)?)
        }
        _ => None,
    };
    let owner_phrase = owner::new_phrase();
    show_phrase(
        "STEP 1 of 4. Your recovery phrase. Write these 24 words on paper, in order.",
        "With them you can rebuild this wallet if you lose this device. Anyone who has them AND your \
         guardians' help can move your savings: keep the paper safe.",
        &owner_phrase,
        !args.no_phrase_check,
    )?;
    let backup_key = match &backup_device {
        Some((key, _)) => {
            say("STEP 2 of 4. Your BACKUP key is on your second Ledger.");
            say("KEEP THAT DEVICE, AND THE 24 WORDS IT WAS SET UP WITH, AWAY FROM HOME (a bank box, a lawyer, \
                 family abroad). With your guardians it opens the deep vault, where emergencies send everything. \
                 Nobody can force it out of you at home if it is not there.");
            key.clone()
        }
        None => {
            let backup_phrase = owner::new_phrase();
            show_phrase(
                "STEP 2 of 4. Your BACKUP key's phrase. Write these 24 words on a second paper.",
                "KEEP THIS PAPER AWAY FROM HOME (a bank box, a lawyer, family abroad). It is never stored \
                 on this device. With your guardians it opens the deep vault, where emergencies send \
                 everything. Nobody can force it out of you at home if it is not there.",
                &backup_phrase,
                !args.no_phrase_check,
            )?;
            owner::backup_key(&backup_phrase, network)
        }
    };
    say("STEP 3 of 4. Your codes.");
    say("The unlock code opens this wallet. The DURESS code opens it too and looks exactly the same,");
    say("but it silently locks your savings and alerts your guardians. Use it if someone forces you.");
    let (real_code, duress_code) = new_codes()?;

    say("STEP 4 of 4. Registering with your co-signer and watchtowers...");
    // Recorded before the token is used: an interruption from here on is finished with
    // `vigil init --resume`.
    vigil_client::wallet::create_private_dir(&dir.path)?;
    let mut setup = Setup {
        cosigner_url: args.cosigner.trim_end_matches('/').to_owned(),
        cosigner_token: args.cosigner_token.clone(),
        enrolled: None,
        tower_tokens: towers.iter().map(|(t, token)| (t.name.clone(), token.clone())).collect(),
        alarm_emails: args.alarm_emails.clone(),
        alarm_webhooks: args.alarm_webhooks.clone(),
        pinned_at_cosigner: false,
    };
    save_setup(&dir, &setup)?;
    let enrolled = enroll(&mut setup)?;
    save_setup(&dir, &setup)?;
    let public = owner::public_keys(&owner_phrase, backup_key, network);
    let draft = PolicyDraft {
        network: args.network.clone(),
        format: if device.is_some() { 2 } else { 1 },
        owner_key: device.as_ref().map_or_else(|| public.owner_key.clone(), |(key, _)| key.clone()),
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
    for (_, record) in device.iter().chain(&backup_device) {
        record.save(&dir)?;
    }
    let state =
        WalletState { birth_height: birth.height, scanned_height: birth.height, ..WalletState::default() };
    dir.save_state(&state)?;
    // Made now, so that no later command is the first to write it.
    let allowance = device.as_ref().and_then(|(_, r)| r.allowance.clone()).unwrap_or(public.allowance_key);
    vigil_client::allowance::Allowance::open(&dir, &allowance, network, birth.height)?.sync(&*chain)?;
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
        vigil_client::cosigner::Nonces::fresh(dir.file("nonce"))?,
    )?;
    if !setup.pinned_at_cosigner {
        let pin = PinPolicy {
            token: setup.cosigner_token.clone(),
            policy: policy_text.clone(),
            heartbeat_real: hashes.real.clone(),
            heartbeat_duress: hashes.duress.clone(),
            alarm_emails: setup.alarm_emails.clone(),
            alarm_webhooks: setup.alarm_webhooks.clone(),
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
            changes: Vec::new(),
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
            "Write this next to your recovery phrase: policy {}. A lost device is rebuilt from the phrase, \
             a copy of the policy (your guardians hold one) and these 16 characters, which tell a true copy \
             from a false one.",
            short_id(&policy_id)
        );
        if super::device::has_signer(dir)? {
            println!("Next: `vigil signer register` so your Ledger knows this wallet's accounts.");
        }
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

/// The policy version a restored vault was made under: the one whose unvault output its
/// pre-signed unvault pays (V's own script holds only the one-time keys; U's output holds the
/// version's keys and delays).
fn restored_version(policies: &vigil_client::policies::Policies, record: &VaultRecord) -> Option<u32> {
    let unvault: vigil_policy::bitcoin::Transaction =
        vigil_policy::bitcoin::consensus::encode::deserialize_hex(&record.unvault).ok()?;
    if unvault.input.first()?.previous_output != record.outpoint {
        return None;
    }
    let paid = &unvault.output.first()?.script_pubkey;
    let plan = record.plan()?;
    policies
        .known()
        .find(|c| c.vault_descriptors(&plan).is_ok_and(|d| d.unvault.script_pubkey() == *paid))
        .map(|c| c.policy().version)
}
