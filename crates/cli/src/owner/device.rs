//! The owner's hardware signer (ADR 0005, ADR 0008): which device holds the vault key, the
//! wallet policies it registered, and the steps of the owner's commands that go through it.
//!
//! The device shows what it signs and what it registers; these steps tell the holder, in
//! plain words, what to check on its screen before approving, and check what comes back (an
//! address the device computes, every signature) against what Vigil built itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;

use vigil_policy::bitcoin::bip32::DerivationPath;
use vigil_policy::bitcoin::hashes::{sha256, Hash};
use vigil_policy::bitcoin::hex::{DisplayHex, FromHex};
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::{Network, OutPoint};
use vigil_policy::{CompiledPolicy, Policy, WalletPolicy};
use vigil_signer::ledger::Ledger;
use vigil_signer::{DeviceState, Found, Registration, Signer, SignerError, Wallet};

use super::*;

pub use vigil_client::wallet::SIGNER_FILE;

/// The record of the device holding the off-site backup key, when it is one (the deep vault's
/// key; kept away from home, connected only to bring the deep vault back).
pub const BACKUP_SIGNER_FILE: &str = "backup-signer.json";

/// Which device holds this wallet's vault key, and the wallet policies it registered.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SignerRecord {
    /// `"ledger"`, or `"ledger backup"` for the backup key's device.
    pub kind: String,
    /// The device's master key fingerprint.
    pub fingerprint: String,
    /// The emulator's address, when the device is one (tests, demos); else it is on USB.
    pub emulator: Option<SocketAddr>,
    /// Each registered wallet policy, by [`digest`]: its id and the device's HMAC, in hex.
    pub registrations: BTreeMap<String, (String, String)>,
    /// The allowance's account on the device (`[fp/86h/coinh/0h]xpub`); none when the
    /// allowance key comes from the recovery phrase.
    #[serde(default)]
    pub allowance: Option<String>,
}

impl SignerRecord {
    /// The wallet's signer, or none: its vault key comes from the recovery phrase.
    pub fn load(dir: &WalletDir) -> anyhow::Result<Option<SignerRecord>> {
        Self::load_file(dir, SIGNER_FILE)
    }

    /// The record kept in `file` of the wallet, if there is one.
    fn load_file(dir: &WalletDir, file: &str) -> anyhow::Result<Option<SignerRecord>> {
        let path = dir.file(file);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let record: SignerRecord = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is damaged", path.display()))?;
                // Saved where its kind says: one of the other kind here would be saved over
                // the other file.
                if record.is_backup() != (file == BACKUP_SIGNER_FILE) {
                    bail!(
                        "{} is damaged: it records another device's kind ({})",
                        path.display(),
                        record.kind
                    );
                }
                Ok(Some(record))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Written whole (a crash leaves the old record or the new one), to the file its kind
    /// names (a load refuses a record of the other kind).
    pub fn save(&self, dir: &WalletDir) -> anyhow::Result<()> {
        let file = if self.is_backup() { BACKUP_SIGNER_FILE } else { SIGNER_FILE };
        Ok(replace_file(&dir.file(file), &serde_json::to_vec_pretty(self)?)?)
    }

    /// Whether this is the backup key's device.
    fn is_backup(&self) -> bool {
        self.kind.ends_with(BACKUP)
    }

    /// The device's registration of `wallet`, if it registered it.
    fn registration(&self, wallet: &Wallet) -> Option<Registration> {
        let (id, hmac) = self.registrations.get(&digest(wallet))?;
        let registration =
            Registration { id: FromHex::from_hex(id).ok()?, hmac: FromHex::from_hex(hmac).ok()? };
        // All zeroes is what the app reads as "no registration": none.
        (registration.hmac != [0; 32]).then_some(registration)
    }
}

/// What a registration is kept under: the wallet policy itself (name, template and keys), so
/// a policy change that alters it needs a new registration.
fn digest(wallet: &Wallet) -> String {
    let text = format!("{}\n{}\n{}", wallet.name, wallet.template, wallet.keys.join("\n"));
    sha256::Hash::hash(text.as_bytes()).to_string()
}

/// The owner's vault key's account on the device: BIP-48, as the recovery phrase's.
fn vault_key_path(network: Network) -> DerivationPath {
    let coin = if network == Network::Bitcoin { 0 } else { 1 };
    DerivationPath::from_str(&format!("m/48'/{coin}'/0'/2'")).expect("a valid path")
}

/// The allowance's account on the device: BIP-86's first, a single-key taproot account the
/// device signs for (and shows addresses of) without a registration.
fn allowance_path(network: Network) -> DerivationPath {
    let coin = if network == Network::Bitcoin { 0 } else { 1 };
    DerivationPath::from_str(&format!("m/86'/{coin}'/0'")).expect("a valid path")
}

/// The device at `emulator` (or on USB), checked: it answers, and the Bitcoin app of
/// `network` is open on it.
pub fn connect(emulator: Option<SocketAddr>, network: Network) -> anyhow::Result<Ledger> {
    let app = vigil_signer::app_for(network);
    let ledger = match emulator {
        Some(addr) => Ledger::emulator(addr),
        None => vigil_signer::ledger::connect_usb(),
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}. Connect your Ledger, unlock it with its PIN and open the \"{app}\" app; nothing was done"
        )
    })?;
    match ledger.state(network) {
        DeviceState::Ready { .. } => Ok(ledger),
        state => {
            let found = Found { kind: "ledger", label: ledger.label().to_owned(), state };
            bail!("{}; nothing was done", found.describe())
        }
    }
}

/// The device of the wallet's `record`: [`connect`], and its key is the wallet's.
fn connect_wallets(record: &SignerRecord, network: Network) -> anyhow::Result<Ledger> {
    let ledger = connect(record.emulator, network)?;
    let fingerprint = ledger.fingerprint().map_err(|e| anyhow::anyhow!("{e}; nothing was done"))?;
    if fingerprint.to_string() != record.fingerprint {
        let which = if record.is_backup() { "your backup key's device" } else { "the wallet's own device" };
        bail!(
            "this Ledger's key is {fingerprint}, and {which} holds {}: connect {which}; nothing was done",
            record.fingerprint
        );
    }
    Ok(ledger)
}

/// What a backup device's record says its kind is (`"ledger backup"`).
const BACKUP: &str = " backup";

/// The off-site backup key from a second device (the deep vault's key, at the account the
/// backup phrase's would be), as a policy names it, and the device's record. The device
/// holding the everyday keys is refused: whoever holds the owner would hold the backup too.
pub fn backup_key(
    ledger: &Ledger,
    network: Network,
    emulator: Option<SocketAddr>,
    everyday: &SignerRecord,
) -> anyhow::Result<(String, SignerRecord)> {
    let fingerprint = ledger.fingerprint()?;
    if fingerprint.to_string() == everyday.fingerprint {
        bail!(
            "this is the Ledger that holds your everyday keys ({fingerprint}): the backup key must live on a \
             second device, set up with its own 24 words and kept away from home; nothing was made"
        );
    }
    let record = SignerRecord {
        kind: format!("ledger{BACKUP}"),
        fingerprint: fingerprint.to_string(),
        emulator,
        registrations: BTreeMap::new(),
        allowance: None,
    };
    Ok((account_key(ledger, fingerprint, vault_key_path(network))?, record))
}

/// Records the device holding the wallet's backup key, checked against the policy (a wallet
/// rebuilt by a restore has no record of it). Its registrations are kept if it had one.
pub fn find_backup_device(session: &Session, emulator: Option<SocketAddr>) -> anyhow::Result<()> {
    say("Connect your BACKUP Ledger (the second device, kept away from home) and open its Bitcoin app.");
    let ledger = connect(emulator, session.network)?;
    let fingerprint = ledger.fingerprint().map_err(|e| anyhow::anyhow!("{e}; nothing was done"))?;
    let key = account_key(&ledger, fingerprint, vault_key_path(session.network))?;
    let backup = &session.current().policy().backup;
    let origin = Some((fingerprint, vault_key_path(session.network)));
    if !key.ends_with(&backup.xpub.to_string()) || backup.origin != origin {
        bail!(
            "this Ledger ({fingerprint}) does not hold this wallet's backup key: connect the backup's own \
             device; nothing was done"
        );
    }
    let kept = SignerRecord::load_file(&session.dir, BACKUP_SIGNER_FILE)?
        .filter(|r| r.fingerprint == fingerprint.to_string());
    let record = SignerRecord {
        kind: format!("ledger{BACKUP}"),
        fingerprint: fingerprint.to_string(),
        emulator,
        registrations: kept.map(|r| r.registrations).unwrap_or_default(),
        allowance: None,
    };
    record.save(&session.dir)
}

/// Whether this wallet's backup key is on a device.
pub fn has_backup_signer(dir: &WalletDir) -> anyhow::Result<bool> {
    Ok(SignerRecord::load_file(dir, BACKUP_SIGNER_FILE)?.is_some())
}

/// The deep-vault recovery `psbt` of `coins` to `destination` signed on the backup key's
/// device: once per policy version's deep vault account (registered first if the device does
/// not hold it: it is connected only for this). Every signature is checked, and every input
/// must carry one of the device's.
pub fn sign_deep_vault(
    session: &Session,
    coins: &[vigil_client::recovery::RecoverableCoin],
    psbt: &Psbt,
    destination: &str,
) -> anyhow::Result<Psbt> {
    let groups = by_account(coins, |coin| {
        let compiled = session.policies.version(coin.version)?;
        let w = compiled
            .wallet_policies()?
            .into_iter()
            .find(|w| w.name == "Vigil deep vault")
            .context("the deep vault's account")?;
        Ok((w, compiled.policy()))
    })?;
    let mut signer = SignerRecord::load_file(&session.dir, BACKUP_SIGNER_FILE)?
        .context("this wallet's backup key is not on a device")?;
    say("Sign with your BACKUP Ledger (the second device, kept away from home), its Bitcoin app open.");
    let ledger = connect_wallets(&signer, session.network)?;
    sign_in_groups(session, &ledger, &mut signer, &groups, psbt, destination)
}

/// The owner's vault key from the device, as a policy names it (`[fp/48h/coinh/0h/2h]xpub`),
/// and the record of the device for the wallet, which names its allowance account too.
pub fn owner_key(
    ledger: &Ledger,
    network: Network,
    emulator: Option<SocketAddr>,
) -> anyhow::Result<(String, SignerRecord)> {
    let fingerprint = ledger.fingerprint()?;
    let record = SignerRecord {
        kind: "ledger".into(),
        fingerprint: fingerprint.to_string(),
        emulator,
        registrations: BTreeMap::new(),
        allowance: Some(account_key(ledger, fingerprint, allowance_path(network))?),
    };
    Ok((account_key(ledger, fingerprint, vault_key_path(network))?, record))
}

/// The device's account at `path`, as a descriptor names it: `[fp/path]xpub`.
fn account_key(
    ledger: &Ledger,
    fingerprint: vigil_policy::bitcoin::bip32::Fingerprint,
    path: DerivationPath,
) -> anyhow::Result<String> {
    let xpub = ledger.xpub(&path)?;
    let origin = path.to_string().trim_start_matches("m/").replace('\'', "h");
    Ok(format!("[{fingerprint}/{origin}]{xpub}"))
}

fn to_wallet(w: &WalletPolicy) -> Wallet {
    Wallet { name: w.name.clone(), template: w.template.clone(), keys: w.keys.clone() }
}

/// The wallet policies of `compiled` the owner's device holds for good: the intake and R
/// (an unvault output is registered with its vault; the deep vault on the backup's device).
fn standing_wallets(compiled: &CompiledPolicy) -> anyhow::Result<Vec<WalletPolicy>> {
    Ok(compiled
        .wallet_policies()?
        .into_iter()
        .filter(|w| !w.per_vault() && w.name != "Vigil deep vault")
        .collect())
}

/// Who each key of `w` is, in the order the device shows them.
fn key_roles(w: &WalletPolicy, policy: &Policy) -> Vec<String> {
    let unspendable = vigil_policy::nums_xpub(policy).to_string();
    w.keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let is = |k: &vigil_policy::PolicyKey| k.key_expression() == *key;
            let who = if *key == unspendable {
                "no one's: it cannot sign (the device shows \"Dummy key\")".to_owned()
            } else if let Some(o) = policy.owner.keys.iter().position(is) {
                format!(
                    "your key{} (the device shows \"Our key\")",
                    if o > 0 { format!(" {}", o + 1) } else { String::new() }
                )
            } else if is(&policy.cosigner) {
                "your co-signer".to_owned()
            } else if let Some(g) = policy.guardians.keys.iter().position(is) {
                format!("guardian {}", g + 1)
            } else if is(&policy.backup) {
                "your off-site backup key".to_owned()
            } else {
                "a key of this vault alone".to_owned()
            };
            let short: Vec<char> = key.rsplit(']').next().unwrap_or(key).chars().collect();
            let head: String = short.iter().take(8).collect();
            let tail: String = short[short.len().saturating_sub(6)..].iter().collect();
            format!("@{i} {who}: {head}…{tail}")
        })
        .collect()
}

/// A signer error in words, with what to do next.
fn device_failed(e: SignerError, then: &str) -> anyhow::Error {
    match e {
        SignerError::Rejected => anyhow::anyhow!("you rejected it on the device. {then}"),
        SignerError::Io(_) | SignerError::NotThere(_) => {
            anyhow::anyhow!("the device went away or stopped answering ({e}). {then}")
        }
        other => anyhow::anyhow!("{other}. {then}"),
    }
}

/// `vigil signer register`.
#[derive(Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    wallet: WalletArgs,
}

/// `vigil signer register`: registers on the wallet's device the wallet policies it signs for,
/// keeping each registration with the wallet; those it holds already are left alone.
pub fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let session = open(&args.wallet)?;
    let Some(mut record) = SignerRecord::load(&session.dir)? else {
        bail!("this wallet's vault key is its recovery phrase, not a device: there is nothing to register");
    };
    let compiled = session.current();
    let ledger = connect_wallets(&record, session.network)?;
    let mut registered = Vec::new();
    let again = "Nothing was registered; run `vigil signer register` again when ready.";
    for w in standing_wallets(compiled)? {
        let wallet = to_wallet(&w);
        // One the device holds already is left alone, once it shows it still accepts it.
        let kept = match record.registration(&wallet) {
            Some(r) => match ledger.address(&wallet, Some(&r), false, 0, false) {
                Err(SignerError::NotRegistered) => {
                    forget_refused(&session.dir, &mut record, &w)?;
                    false
                }
                Err(e) => return Err(device_failed(e, again)),
                Ok(_) => true,
            },
            None => false,
        };
        if !kept {
            register_now(&session.dir, &ledger, &mut record, &w, compiled.policy(), again)?;
        }
        registered.push(json!({"name": w.name, "new": !kept}));
    }
    if args.wallet.json {
        println!("{}", json!({ "registered": registered }));
    } else {
        println!("Your Ledger holds this wallet's accounts: it will show your addresses and what you sign.");
    }
    Ok(())
}

/// The standing account `name` of the wallet's current policy, the wallet's device and its
/// record, or why the device cannot sign for it yet (`vigil signer register` comes first).
fn standing(session: &Session, name: &str) -> anyhow::Result<(WalletPolicy, Ledger, SignerRecord)> {
    let w = standing_wallet(session.current(), name)?;
    let record = SignerRecord::load(&session.dir)?.context("this wallet has no hardware signer")?;
    if record.registration(&to_wallet(&w)).is_none() {
        bail!(
            "your Ledger has not registered \"{}\" yet: run `vigil signer register`; nothing was done",
            w.name
        );
    }
    Ok((w, connect_wallets(&record, session.network)?, record))
}

/// Whether this wallet's vault key is on a device.
pub fn has_signer(dir: &WalletDir) -> anyhow::Result<bool> {
    Ok(SignerRecord::load(dir)?.is_some())
}

/// The standing account `name` of `compiled`.
fn standing_wallet(compiled: &CompiledPolicy, name: &str) -> anyhow::Result<WalletPolicy> {
    standing_wallets(compiled)?
        .into_iter()
        .find(|w| w.name == name)
        .with_context(|| format!("no account {name:?}"))
}

/// Checks, before anything is built or asked of the co-signer, that the wallet's device is
/// there and holds (and still accepts) its registration of each intake account `coins` were
/// paid to, which a vault's funding from them is signed with: the ceremony does not wait on a
/// registration.
pub fn ready_to_fund(session: &Session, state: &WalletState, coins: &[OutPoint]) -> anyhow::Result<()> {
    let mut record = SignerRecord::load(&session.dir)?.context("this wallet has no hardware signer")?;
    let accounts = intake_accounts(session, state, coins)?;
    // Only the accounts these coins belong to: a change that brought new intake scripts does
    // not hold up coins received before it. Today's is registered by `vigil signer register`;
    // an earlier version's, which that command no longer offers, is registered here.
    let today = standing_wallet(session.current(), "Vigil intake")?;
    if let Some((w, _)) =
        accounts.iter().find(|(w, _)| *w == today && record.registration(&to_wallet(w)).is_none())
    {
        bail!(
            "your Ledger has not registered \"{}\" yet: run `vigil signer register`; nothing was done",
            w.name
        );
    }
    let ledger = connect_wallets(&record, session.network)?;
    for (w, policy) in &accounts {
        // A refused record of today's is forgotten before it is registered again: if that
        // fails, this command will ask for `signer register` first, so say it now.
        let again = if *w == today {
            "Nothing was done; run `vigil signer register` when ready, then the same command again."
        } else {
            "Nothing was done; run the same command again when ready."
        };
        let wallet = to_wallet(w);
        with_registration(session, &ledger, &mut record, w, policy, again, |r| {
            ledger.address(&wallet, Some(r), false, 0, false)
        })?;
    }
    Ok(())
}

/// The intake accounts (one per policy version whose intake scripts differ) that `coins` of
/// `state` were paid to, today's first.
fn intake_accounts<'a>(
    session: &'a Session,
    state: &WalletState,
    coins: &[OutPoint],
) -> anyhow::Result<Vec<(WalletPolicy, &'a Policy)>> {
    let mut versions = Vec::new();
    for outpoint in coins {
        let coin = state
            .coins
            .iter()
            .find(|c| c.outpoint == *outpoint)
            .context("the funding spends a coin this wallet did not receive; nothing was done")?;
        versions.push(session.policies.version(coin.policy_version)?.policy().version);
    }
    let today = session.current().policy().version;
    versions.sort_by_key(|v| (*v != today, *v));
    versions.dedup();
    // One account per version, but versions that left the intake's scripts alone share one.
    let mut accounts: Vec<(WalletPolicy, &Policy)> = Vec::new();
    for version in versions {
        let compiled = session.policies.version(Some(version))?;
        let w = standing_wallet(compiled, "Vigil intake")?;
        if !accounts.iter().any(|(a, _)| *a == w) {
            accounts.push((w, compiled.policy()));
        }
    }
    Ok(accounts)
}

/// Shows the intake address at `index` on the device for the holder to compare, after
/// checking the device computes the same one.
pub fn show_intake_address(session: &Session, index: u32, address: &Address) -> anyhow::Result<()> {
    let (w, ledger, mut record) = standing(session, "Vigil intake")?;
    let wallet = to_wallet(&w);
    let (registration, computed) =
        with_registration(session, &ledger, &mut record, &w, session.current().policy(), DO_NOT_USE, |r| {
            Ok((*r, ledger.address(&wallet, Some(r), false, index, false)?))
        })?;
    show_address(&ledger, &wallet, Some(&registration), index, address, computed)
}

/// Shows the allowance address at `index` on the device, which holds the allowance `account`,
/// for the holder to compare, after checking the device computes the same one.
pub fn show_allowance_address(
    session: &Session,
    account: &str,
    index: u32,
    address: &Address,
) -> anyhow::Result<()> {
    let record = SignerRecord::load(&session.dir)?.context("this wallet has no hardware signer")?;
    let ledger = connect_wallets(&record, session.network)?;
    allowance_is_the_devices(&ledger, &record, account, session.network)?;
    let wallet = Wallet::single_key(account.to_owned());
    let computed =
        ledger.address(&wallet, None, false, index, false).map_err(|e| device_failed(e, DO_NOT_USE))?;
    show_address(&ledger, &wallet, None, index, address, computed)
}

const DO_NOT_USE: &str = "Do not use the address until the device shows it.";

/// Shows `address`, the receive address of `wallet` at `index`, on the device, once the address
/// the device `computed` there is found to be the same.
fn show_address(
    ledger: &Ledger,
    wallet: &Wallet,
    registration: Option<&Registration>,
    index: u32,
    address: &Address,
    computed: Address<vigil_policy::bitcoin::address::NetworkUnchecked>,
) -> anyhow::Result<()> {
    if computed.assume_checked_ref().script_pubkey() != address.script_pubkey() {
        bail!(
            "your Ledger computes another address than this computer ({}): something on this computer is \
             wrong or tampered with. Do NOT use it; tell your guardians",
            computed.assume_checked()
        );
    }
    say(&format!("Check that your Ledger shows exactly {address} (it may write it with a testnet prefix), then confirm on it."));
    ledger.address(wallet, registration, false, index, true).map_err(|e| device_failed(e, DO_NOT_USE))?;
    Ok(())
}

/// Checks the allowance account the wallet's record names is the device's own: the record is
/// a file on this computer.
fn allowance_is_the_devices(
    ledger: &Ledger,
    record: &SignerRecord,
    account: &str,
    network: Network,
) -> anyhow::Result<()> {
    // The device's fingerprint is the record's: `connect_wallets` checked it.
    let fingerprint = record.fingerprint.parse().context("signer.json is damaged")?;
    if account_key(ledger, fingerprint, allowance_path(network))? != account
        || record.allowance.as_deref() != Some(account)
    {
        bail!(
            "this computer's record of your allowance account (signer.json) is not your Ledger's: it was changed. \
             Something on this computer may be tampered with: do not use its allowance addresses, and tell your \
             guardians; nothing was done"
        );
    }
    Ok(())
}

/// Says what the device's screen must show before the holder approves `psbt`: `paid` (its
/// first output, in words), the change back to the holder's own intake address (unless the
/// account signing now knows it as its own change, `change_known`, and shows nothing), the fee.
fn say_what_to_check(session: &Session, psbt: &Psbt, paid: String, change_known: bool) {
    say("Sign on your Ledger. Check on its screen, then approve only if it says:");
    say(&format!("  {paid}"));
    if let Some(change) = psbt.unsigned_tx.output.get(1) {
        let back = Address::from_script(&change.script_pubkey, session.network)
            .map(|a| a.to_string())
            .unwrap_or_default();
        if change_known {
            // Any other output the device shows is not this wallet's: the holder rejects it.
            say(&format!(
                "  and no other payment: the change, {}, comes back to your wallet's change address {back}, \
                 which the device knows as its own and does not show",
                btc(change.value.to_sat())
            ));
        } else {
            say(&format!("  {} to {back} (back to your own intake address)", btc(change.value.to_sat())));
        }
    }
    let fee = psbt.fee().map(|f| btc(f.to_sat())).unwrap_or_else(|_| "unknown".into());
    say(&format!("  a fee of {fee}"));
    say("Waiting for you on the device...");
}

/// The vault's funding signed on the device: the holder checks on its screen the amount going
/// to the new vault, the change back to the intake and the fee. Coins paid to an earlier
/// policy version's intake address belong to that version's intake account: the device signs
/// once per account (registering an earlier one first if it does not hold it). Every signature
/// is checked here, and against the policy by the caller.
pub fn sign_funding(session: &Session, funding: &Psbt, amount: Amount) -> anyhow::Result<Psbt> {
    let mut record = SignerRecord::load(&session.dir)?.context("this wallet has no hardware signer")?;
    let ledger = connect_wallets(&record, session.network)?;
    let coins: Vec<OutPoint> = funding.unsigned_tx.input.iter().map(|i| i.previous_output).collect();
    let accounts = intake_accounts(session, &session.dir.state()?, &coins)?;
    let vault_address = Address::from_script(&funding.unsigned_tx.output[0].script_pubkey, session.network)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let again = "Nothing was moved. The vault under way waits 10 minutes for your signature: `vigil vault \
                 --resume` shows it on the device again.";
    // The change goes to today's intake account, which knows its change branch as its own.
    let today = standing_wallet(session.current(), "Vigil intake")?;
    let mut signed = funding.clone();
    for (n, (w, policy)) in accounts.iter().enumerate() {
        let out = with_registration(session, &ledger, &mut record, w, policy, again, |r| {
            if accounts.len() > 1 {
                say(&format!(
                    "Your coins belong to {} accounts on your Ledger, signed one after the other ({} of {}); \
                     it may warn of inputs it does not sign this time: continue.",
                    accounts.len(),
                    n + 1,
                    accounts.len()
                ));
            }
            say_what_to_check(
                session,
                funding,
                format!("{} to {vault_address} (your new vault)", btc(amount.to_sat())),
                *w == today && session.current().has_change_branch(),
            );
            ledger.sign(funding, &to_wallet(w), Some(r))
        })?;
        for (mine, theirs) in signed.inputs.iter_mut().zip(out.inputs) {
            mine.tap_script_sigs.extend(theirs.tap_script_sigs);
        }
    }
    checked_signatures(&signed, &record.fingerprint)?;
    Ok(signed)
}

/// The allowance payment `psbt` of `amount` to `destination` signed on the wallet's device,
/// which holds the allowance `account` (a standard single-key account it signs for without a
/// registration; the change goes to its own change branch, which it does not show). Every
/// signature is checked.
pub fn sign_allowance_payment(
    session: &Session,
    account: &str,
    psbt: &Psbt,
    destination: &Address,
    amount: Amount,
) -> anyhow::Result<Psbt> {
    let record = SignerRecord::load(&session.dir)?.context("this wallet has no hardware signer")?;
    let ledger = connect_wallets(&record, session.network)?;
    allowance_is_the_devices(&ledger, &record, account, session.network)?;
    let fee = psbt.fee().map(|f| btc(f.to_sat())).unwrap_or_else(|_| "unknown".into());
    say("Sign on your Ledger. Check on its screen, then approve only if it says:");
    say(&format!("  {} to {destination}", btc(amount.to_sat())));
    say(&format!("  a fee of {fee}"));
    say("Waiting for you on the device...");
    let signed = ledger
        .sign(psbt, &Wallet::single_key(account.to_owned()), None)
        .map_err(|e| device_failed(e, "Nothing was sent; run the same command again when ready."))?;
    checked_signatures(&signed, &record.fingerprint)?;
    Ok(signed)
}

/// Registers `w` on the device, shown to the holder with who each key is, and keeps the
/// registration with the wallet.
fn register_now(
    dir: &WalletDir,
    ledger: &Ledger,
    signer: &mut SignerRecord,
    w: &WalletPolicy,
    policy: &Policy,
    again: &str,
) -> anyhow::Result<Registration> {
    let wallet = to_wallet(w);
    say(&format!("Your Ledger registers the account \"{}\". Check on its screen, then approve:", w.name));
    say(&format!("  the account name \"{}\" and its policy {}", w.name, w.template));
    for line in key_roles(w, policy) {
        say(&format!("  {line}"));
    }
    say("Waiting for you on the device...");
    let done = ledger.register(&wallet).map_err(|e| device_failed(e, again))?;
    signer
        .registrations
        .insert(digest(&wallet), (done.id.to_lower_hex_string(), done.hmac.to_lower_hex_string()));
    signer.save(dir)?;
    Ok(done)
}

/// Forgets the kept registration of `w` the device refused, saying so.
fn forget_refused(dir: &WalletDir, signer: &mut SignerRecord, w: &WalletPolicy) -> anyhow::Result<()> {
    say(&format!(
        "Your Ledger does not accept this computer's record of its registration of \"{}\": the record \
         ({}) was changed or damaged. If you did not do it, something on this computer may be \
         tampered with: tell your guardians. The device registers the account again; check it as the first time.",
        w.name,
        if signer.is_backup() { BACKUP_SIGNER_FILE } else { SIGNER_FILE }
    ));
    signer.registrations.remove(&digest(&to_wallet(w)));
    signer.save(dir)
}

/// `ask` of the device with its registration of `w`, made first if the device does not hold
/// it yet (a vault's own account, or an account of an earlier policy version); a registration
/// the device does not accept is made again, said, and `ask` asked once more.
fn with_registration<T>(
    session: &Session,
    ledger: &Ledger,
    signer: &mut SignerRecord,
    w: &WalletPolicy,
    policy: &Policy,
    again: &str,
    ask: impl Fn(&Registration) -> Result<T, SignerError>,
) -> anyhow::Result<T> {
    let registration = match signer.registration(&to_wallet(w)) {
        Some(r) => r,
        None => register_now(&session.dir, ledger, signer, w, policy, again)?,
    };
    match ask(&registration) {
        Err(SignerError::NotRegistered) => {
            forget_refused(&session.dir, signer, w)?;
            let registration = register_now(&session.dir, ledger, signer, w, policy, again)?;
            ask(&registration).map_err(|e| device_failed(e, again))
        }
        answer => answer.map_err(|e| device_failed(e, again)),
    }
}

/// The unvault output of the vault `record` as the wallet policy the device registers for it
/// (its one-time keys filled in), named after the vault.
fn vault_wallet(compiled: &CompiledPolicy, record: &VaultRecord) -> anyhow::Result<WalletPolicy> {
    let Some([owner_once, cosigner_once]) = &record.once_xpubs else {
        bail!(
            "vault {} was made without one-time extended keys (before this version, or rebuilt by a \
             restore), so your Ledger cannot register it: spend it with --sign-elsewhere; nothing was signed",
            record.outpoint
        );
    };
    let name = if record.kind == "guarded" { "Vigil guarded vault" } else { "Vigil vault" };
    let mut w =
        compiled.wallet_policies()?.into_iter().find(|w| w.name == name).context("an unvault wallet")?;
    for key in &mut w.keys {
        match key.as_str() {
            "OO" => key.clone_from(owner_once),
            "CO" => key.clone_from(cosigner_once),
            _ => {}
        }
    }
    w.name = format!("{name} {}", record.index);
    Ok(w)
}

/// The vault spend `psbt` of vault `record`, to `destination`, signed on the device: the
/// vault's account is registered first if the device does not hold it yet (shown to the
/// holder like any other). The caller checks every signature.
pub fn sign_spend(
    session: &Session,
    record: &VaultRecord,
    psbt: &Psbt,
    destination: &str,
    amount: Amount,
) -> anyhow::Result<Psbt> {
    let compiled = session.policies.version(record.policy_version)?;
    let w = vault_wallet(compiled, record)?;
    let wallet = to_wallet(&w);
    let mut signer = SignerRecord::load(&session.dir)?.context("this wallet has no hardware signer")?;
    let ledger = connect_wallets(&signer, session.network)?;
    let again = "Nothing was sent. `vigil spend --resume` shows it on the device again.";
    // Said just before each signing, after any registration the device shows first.
    with_registration(session, &ledger, &mut signer, &w, compiled.policy(), again, |r| {
        say_what_to_check(session, psbt, format!("{} to {destination}", btc(amount.to_sat())), false);
        ledger.sign(psbt, &wallet, Some(r))
    })
}

/// The recovery `psbt` of `coins` (in its inputs' order) to `destination`, signed on the
/// device: once per account the coins belong to (the intake, R, a vault's own), each shown to
/// the holder; every signature is checked, and every input must carry one of the device's.
pub fn sign_recovery(
    session: &Session,
    state: &WalletState,
    coins: &[vigil_client::recovery::RecoverableCoin],
    psbt: &Psbt,
    destination: &str,
) -> anyhow::Result<Psbt> {
    let groups = by_account(coins, |coin| recovery_wallet(session, state, coin))?;
    let mut signer = SignerRecord::load(&session.dir)?.context("this wallet has no hardware signer")?;
    let ledger = connect_wallets(&signer, session.network)?;
    sign_in_groups(session, &ledger, &mut signer, &groups, psbt, destination)
}

/// The accounts `coins` belong to, each once, as `account_of` names them.
fn by_account<'a>(
    coins: &[vigil_client::recovery::RecoverableCoin],
    account_of: impl Fn(&vigil_client::recovery::RecoverableCoin) -> anyhow::Result<(WalletPolicy, &'a Policy)>,
) -> anyhow::Result<Vec<(WalletPolicy, &'a Policy)>> {
    let mut groups: Vec<(WalletPolicy, &Policy)> = Vec::new();
    for coin in coins {
        let (w, policy) = account_of(coin)?;
        if !groups.iter().any(|(g, _)| *g == w) {
            groups.push((w, policy));
        }
    }
    Ok(groups)
}

/// The recovery `psbt` to `destination` signed on `ledger` once per account of `groups`, each
/// shown to the holder; every signature is checked, and every input must carry one of the
/// device's.
fn sign_in_groups(
    session: &Session,
    ledger: &Ledger,
    signer: &mut SignerRecord,
    groups: &[(WalletPolicy, &Policy)],
    psbt: &Psbt,
    destination: &str,
) -> anyhow::Result<Psbt> {
    let again = "Nothing was signed; run the same command again when ready.";
    let amount = psbt.unsigned_tx.output.iter().map(|o| o.value.to_sat()).sum();
    let fee = psbt.fee().map(|f| btc(f.to_sat())).unwrap_or_else(|_| "unknown".into());
    let mut signed = psbt.clone();
    for (i, (w, policy)) in groups.iter().enumerate() {
        let out = with_registration(session, ledger, signer, w, policy, again, |r| {
            say(&format!(
                "Sign on your Ledger ({} of {}, for \"{}\"). Check on its screen, then approve only if it says:",
                i + 1,
                groups.len(),
                w.name
            ));
            say(&format!("  {} to {destination} (your recovery address), and a fee of {fee}", btc(amount)));
            if groups.len() > 1 {
                say("  It may warn of inputs it does not sign this time (those of your other accounts): continue.");
            }
            say("Waiting for you on the device...");
            ledger.sign(&signed, &to_wallet(w), Some(r))
        })?;
        for (mine, theirs) in signed.inputs.iter_mut().zip(out.inputs) {
            mine.tap_script_sigs.extend(theirs.tap_script_sigs);
        }
    }
    checked_signatures(&signed, &signer.fingerprint)?;
    Ok(signed)
}

/// The account of the device a recoverable coin belongs to, or why the device cannot sign it.
pub fn recovery_wallet<'a>(
    session: &'a Session,
    state: &WalletState,
    coin: &vigil_client::recovery::RecoverableCoin,
) -> anyhow::Result<(WalletPolicy, &'a Policy)> {
    use vigil_client::recovery::CoinKind;
    let compiled = session.policies.version(coin.version)?;
    let w = match coin.kind {
        CoinKind::Intake => standing_wallet(compiled, "Vigil intake")?,
        CoinKind::Cancelled => standing_wallet(compiled, "Vigil recovery")?,
        CoinKind::Unvaulted => {
            let record = state
                .vaults
                .iter()
                .find(|v| Some(v.outpoint) == coin.vault)
                .context("its vault is not in this wallet")?;
            vault_wallet(compiled, record)?
        }
        CoinKind::DeepVault => bail!("the deep vault is signed by your off-site backup key's device"),
    };
    Ok((w, compiled.policy()))
}

/// Every taproot signature of `psbt` (script path, and key path for the allowance) checked
/// against its input's sighash (SIGHASH_DEFAULT), and every input carrying at least one by a
/// key of the device `fingerprint`: what comes back from a device is not trusted.
fn checked_signatures(psbt: &Psbt, fingerprint: &str) -> anyhow::Result<()> {
    use vigil_policy::bitcoin::secp256k1::{Message, Secp256k1};
    use vigil_policy::bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
    let prevouts: Vec<_> = psbt.inputs.iter().filter_map(|i| i.witness_utxo.clone()).collect();
    if prevouts.len() != psbt.inputs.len() {
        bail!("the transaction's inputs lack their coins; nothing was done");
    }
    let secp = Secp256k1::verification_only();
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    let by = |input: &vigil_policy::bitcoin::psbt::Input, key: &vigil_policy::bitcoin::XOnlyPublicKey| {
        input.tap_key_origins.get(key).is_some_and(|(_, (fp, _))| fp.to_string() == fingerprint)
    };
    for (i, input) in psbt.inputs.iter().enumerate() {
        let mut by_device = false;
        if let Some(sig) = &input.tap_key_sig {
            let hash = cache
                .taproot_key_spend_signature_hash(i, &Prevouts::All(&prevouts), TapSighashType::Default)
                .context("a sighash")?;
            // The key a key-path signature is checked against is the output's own.
            let spk = &prevouts[i].script_pubkey;
            let output_key = spk
                .is_p2tr()
                .then(|| vigil_policy::bitcoin::XOnlyPublicKey::from_slice(&spk.as_bytes()[2..]).ok())
                .flatten();
            let verified = output_key.is_some_and(|key| {
                sig.sighash_type == TapSighashType::Default
                    && secp
                        .verify_schnorr(&sig.signature, &Message::from_digest(hash.to_byte_array()), &key)
                        .is_ok()
            });
            if !verified {
                bail!("a signature on input {i} does not verify: it is not used, and nothing was done");
            }
            by_device |= input.tap_internal_key.as_ref().is_some_and(|key| by(input, key));
        }
        for ((key, leaf), sig) in &input.tap_script_sigs {
            let hash = cache
                .taproot_script_spend_signature_hash(
                    i,
                    &Prevouts::All(&prevouts),
                    *leaf,
                    TapSighashType::Default,
                )
                .context("a sighash")?;
            if sig.sighash_type != TapSighashType::Default
                || secp
                    .verify_schnorr(&sig.signature, &Message::from_digest(hash.to_byte_array()), key)
                    .is_err()
            {
                bail!("a signature on input {i} does not verify: it is not used, and nothing was done");
            }
            by_device |= by(input, key);
        }
        if !by_device {
            bail!("your Ledger did not sign input {i}; nothing was done");
        }
    }
    Ok(())
}
