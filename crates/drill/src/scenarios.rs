//! The scenarios, each on a household of its own so one's lockdown never colours the next.
//! Every household starts the same: a hot wallet, two standard vaults and one guarded vault
//! (S5's has a third standard vault, to go over the velocity budget).

use std::time::Instant;

use serde_json::Value;
use vigil_policy::bitcoin::{Address, Amount};

use crate::household::{holdings, outpoint, Household, DELAY, DURESS, GUARDIANS, REAL, THRESHOLD, VELOCITY};
use crate::world::{fresh_address, step};
use crate::{DrillError, Play};

/// A scenario: its id, what it plays, and how.
pub struct Scenario {
    /// `S1`…
    pub id: &'static str,
    /// What it plays.
    pub title: &'static str,
    /// Plays it.
    pub play: fn(&mut Play) -> Result<(), DrillError>,
}

/// Every scenario, in order (S10 stops the co-signer for good: it comes last).
pub const ALL: &[Scenario] = &[
    Scenario { id: "S1", title: "honest small spend: instant, from the allowance", play: s1 },
    Scenario {
        id: "S2",
        title: "honest large spend with the guardians' approvals: done at DELAY + 1",
        play: s2,
    },
    Scenario { id: "S3", title: "a coerced owner broadcasts an unvault nobody approved", play: s3 },
    Scenario { id: "S4", title: "a coerced owner gives the duress code", play: s4 },
    Scenario { id: "S5", title: "a coerced owner with the co-signer compromised", play: s5 },
    Scenario { id: "S6", title: "a coerced owner while two of three towers are down", play: s6 },
    Scenario { id: "S7", title: "the attacker makes the owner ask the guardians", play: s7 },
    Scenario {
        id: "S8",
        title: "the attacker holds the owner for 7 days of blocks, retrying every path",
        play: s8,
    },
    Scenario { id: "S9", title: "a rogue tower broadcasts every emergency transaction it holds", play: s9 },
    Scenario { id: "S10", title: "the co-signer vanishes for good: owner and guardians recover", play: s10 },
];

/// The allowance each household holds, sats.
const ALLOWANCE: u64 = 1_500_000;
/// Its standard vaults (within the velocity budget) and its guarded one, sats.
const VAULTS: [u64; 3] = [4_000_000, 4_000_000, 30_000_000];

/// Sets up and funds the scenario's household; records what is at risk and the allowance.
fn household(play: &mut Play, name: &str) -> Result<Household, DrillError> {
    household_with(play, name, &VAULTS)
}

/// [`household`] with these vaults.
fn household_with(play: &mut Play, name: &str, vaults: &[u64]) -> Result<Household, DrillError> {
    let h = Household::set_up(play.world, name)?;
    h.fund(play.world, ALLOWANCE, vaults)?;
    let status = h.status()?;
    play.at_risk_sats = holdings(&status);
    play.hot_wallet_sats = status["allowance_sat"].as_u64().unwrap_or(0);
    // DESIGN G1: a captor holding the owner gets the hot wallet and what the velocity budget
    // releases (no scenario spans two windows unless under duress, which releases nothing).
    play.allowance_sats = play.hot_wallet_sats + VELOCITY;
    play.note(
        "owner",
        "action",
        format!(
            "set up with {} guardians ({THRESHOLD} must approve), funded: {} in vaults, {} in the allowance",
            GUARDIANS,
            btc(status["vault_sat"].as_u64().unwrap_or(0)),
            btc(play.hot_wallet_sats)
        ),
    );
    Ok(h)
}

/// Sats as BTC, for people.
pub fn btc(sats: u64) -> String {
    format!("{} BTC", Amount::from_sat(sats).to_btc())
}

fn btc_arg(sats: u64) -> String {
    Amount::from_sat(sats).to_btc().to_string()
}

/// The first vault of `kind` (`standard`, `guarded`) in the wallet's records.
fn vault_of(h: &Household, kind: &str) -> Result<Value, DrillError> {
    h.vaults()?.into_iter().find(|v| v["kind"] == kind).ok_or(DrillError::Step {
        what: "finding a vault".into(),
        why: format!("the wallet has no {kind} vault"),
    })
}

/// What the attacker's address received since the scenario began.
fn extracted(play: &mut Play, attacker: &Address, from: u32) -> Result<(), DrillError> {
    play.extracted_sats = play.world.received(&attacker.script_pubkey(), from)?;
    Ok(())
}

/// The stage of the first spend a `vigil spend --json` answer lists.
fn stage(v: &Value) -> String {
    v[0]["progress"]["stage"].as_str().unwrap_or_default().to_owned()
}

/// What a `vigil spend --json` run showed: the stage, or the refusal's last line.
fn answer(run: &crate::household::Run) -> String {
    if run.ok {
        serde_json::from_str::<Value>(&run.out).map(|v| stage(&v)).unwrap_or_default()
    } else {
        // The message after the prompts, to its first clause.
        let last = run.err.trim().lines().last().unwrap_or_default();
        let message = last.rsplit("error: ").next().unwrap_or_default();
        // A server's refusal without its address ("http://… refused (409): why").
        let message =
            message.split_once(" refused (").and_then(|(_, m)| m.split_once("): ")).map_or(message, |m| m.1);
        format!("refused: {}", message.split([';', '(']).next().unwrap_or_default().trim())
    }
}

/// The attacker broadcasts `vault`'s pre-signed unvault from the owner's records; the
/// towers must cancel it, alarm the guardians, and the coins must stay the household's.
fn unapproved_unvault(
    play: &mut Play,
    vault: &Value,
    attacker: &Address,
    from: u32,
) -> Result<(), DrillError> {
    let id = outpoint(vault)?.to_string();
    let hex = vault["unvault"].as_str().unwrap_or_default();
    let event = Instant::now();
    play.world
        .rpc
        .call("sendrawtransaction", serde_json::json!([hex]))
        .map_err(step("broadcasting the unvault"))?;
    play.note("attacker", "tx", "broadcasts the vault's pre-signed unvault, taken from the owner's phone");
    play.expect_alarm("unvault-cancelled", event, |a| a["vault"] == id.as_str());
    // The cancel confirms; the attacker waits out DELAY and gets nothing.
    let cancelled = Cancelled::watch(vault)?;
    play.mine(DELAY + 1)?;
    extracted(play, attacker, from)?;
    let done = cancelled.confirmed(play)?;
    play.check(done, "the unvault was not cancelled on chain");
    if done {
        play.note("tower", "tx", "the cancel confirmed: the coins are back in custody");
    }
    Ok(())
}

/// A vault's pre-signed unvault, from the wallet's records.
fn unvault_of(vault: &Value) -> Result<vigil_policy::bitcoin::Transaction, DrillError> {
    use vigil_policy::bitcoin::consensus::encode::deserialize_hex;
    deserialize_hex(vault["unvault"].as_str().unwrap_or_default()).map_err(step("reading an unvault"))
}

/// Whether a vault's unvault output was spent by anything but the owner's payment.
struct Cancelled {
    unvault: vigil_policy::bitcoin::OutPoint,
}

impl Cancelled {
    fn watch(vault: &Value) -> Result<Cancelled, DrillError> {
        let tx = unvault_of(vault)?;
        Ok(Cancelled { unvault: vigil_policy::bitcoin::OutPoint { txid: tx.compute_txid(), vout: 0 } })
    }

    /// Whether the unvault's output is spent on chain (by the cancel: the attacker has no key).
    fn confirmed(&self, play: &Play) -> Result<bool, DrillError> {
        use vigil_chain::ChainBackend;
        let unspent =
            play.world.rpc.unspent_output(&self.unvault).map_err(step("reading the unvault's output"))?;
        Ok(unspent.is_none() && self.unvault_mined(play)?)
    }

    /// Whether the unvault itself confirmed.
    fn unvault_mined(&self, play: &Play) -> Result<bool, DrillError> {
        use vigil_chain::ChainBackend;
        let info =
            play.world.rpc.transaction_info(&self.unvault.txid).map_err(step("reading the unvault"))?;
        Ok(matches!(info, Some((_, Some(_)))))
    }
}

/// Mines up to `blocks` blocks until the household's vaults are all in the deep vault;
/// what it holds.
fn wait_for_sweep(play: &mut Play, h: &Household, blocks: u32) -> Result<u64, DrillError> {
    let mut swept = 0;
    for _ in 0..blocks {
        play.world.mine(1)?;
        let status = h.status()?;
        swept = status["deep_vault_sat"].as_u64().unwrap_or(0);
        if swept > 0 && status["vault_sat"].as_u64() == Some(0) {
            break;
        }
    }
    Ok(swept)
}

/// The deep vault's fast path: the off-site backup key, every guardian, then the co-signer;
/// no LONG wait. Checks the payment is what was prepared; returns what came home.
fn fast_path_home(play: &mut Play, h: &Household) -> Result<u64, DrillError> {
    let home = fresh_address();
    let psbt = h.dir.join("deep-vault.psbt");
    let p = psbt.to_str().unwrap_or_default();
    let prepared = h.owner_json(
        &["recover", "--deep-vault", "--to", &home.to_string(), "--psbt", p],
        &[REAL, &h.backup],
    )?;
    for g in 0..GUARDIANS {
        h.guardian_json(g, &["sign-recovery", p, "--yes"], true)?;
    }
    let finished = h.owner_json(&["recover", "--finish", p], &[REAL])?;
    let from = play.world.height()?;
    play.note(
        "owner",
        "tx",
        format!(
            "the backup key, every guardian and the co-signer bring the deep vault back: {}",
            finished["stage"]
        ),
    );
    play.mine(1)?;
    let back = play.world.received(&home.script_pubkey(), from)?;
    let amount = prepared["amount_sat"].as_u64().unwrap_or(0);
    play.check(
        back == amount && back > 0,
        format!("the fast path paid {back} sats, not the {amount} prepared"),
    );
    Ok(back)
}

fn s1(play: &mut Play) -> Result<(), DrillError> {
    let h = household(play, "s1")?;
    let shop = fresh_address();
    let amount = 250_000;
    let sent = h.owner_json(&["spend", &shop.to_string(), &btc_arg(amount)], &[REAL])?;
    let from = play.world.height()?;
    play.note("owner", "tx", format!("pays {} from the allowance: {}", btc(amount), stage(&sent)));
    play.check(stage(&sent) == "sent from the allowance", format!("the small spend was not instant: {sent}"));
    play.mine(1)?;
    let paid = play.world.received(&shop.script_pubkey(), from + 1)?;
    play.check(paid == amount, format!("the shop got {paid} sats in the next block, not {amount}"));
    play.outcome = format!("paid {} at once from the allowance, confirmed in the next block", btc(paid));
    Ok(())
}

fn s2(play: &mut Play) -> Result<(), DrillError> {
    let h = household(play, "s2")?;
    let shop = fresh_address();
    let amount = 20_000_000;
    // The event is observable from the moment the request is made.
    let event = Instant::now();
    let asked = h.owner_json(&["spend", &shop.to_string(), &btc_arg(amount)], &[REAL, &h.phrase])?;
    let id = asked[0]["id"].as_u64().unwrap_or_default();
    play.note(
        "owner",
        "action",
        format!("asks to send {} from the guarded vault: {}", btc(amount), stage(&asked)),
    );
    let client = h.client_id()?;
    play.expect_alarm("approval-needed", event, |a| a["client"] == client.as_str());
    for g in 0..THRESHOLD {
        h.guardian_json(g, &["approve", &id.to_string(), "--yes"], true)?;
        play.note("guardians", "action", format!("guardian {} approves", g + 1));
    }
    let started = h.owner_json(&["spend", "--resume"], &[REAL])?;
    play.note("owner", "tx", format!("the unvault is broadcast: {}", stage(&started)));
    let unvault_height = play.mine(1)?;
    // One block before the spend may be mined, it is not sent; at the block, it is.
    let waiting = h.owner_json(&["spend", "--resume"], &[REAL])?;
    let from = waiting[0]["progress"]["spendable_from_height"].as_u64().unwrap_or_default() as u32;
    let tip = play.world.height()?;
    play.mine(from.saturating_sub(tip + 1))?;
    let early = h.owner_json(&["spend", "--resume"], &[REAL])?;
    play.check(stage(&early) == "unlocking", format!("one block early the spend went: {early}"));
    play.mine(1)?;
    let sent = h.owner_json(&["spend", "--resume"], &[REAL])?;
    play.note("owner", "tx", format!("DELAY has passed: {}", stage(&sent)));
    let paid_at = play.mine(1)?;
    let done = h.owner_json(&["spend", "--resume"], &[REAL])?;
    let paid = play.world.received(&shop.script_pubkey(), unvault_height)?;
    play.check(stage(&done) == "done" && paid == amount, format!("the payment did not complete: {done}"));
    let on_time = paid_at <= unvault_height + DELAY + 1;
    play.check(on_time, format!("paid at block {paid_at}, the unvault at {unvault_height}: late"));
    play.outcome = format!(
        "paid {} at block {paid_at}: unvault at {unvault_height}, DELAY {DELAY}, {} blocks after it",
        btc(paid),
        paid_at - unvault_height
    );
    Ok(())
}

fn s3(play: &mut Play) -> Result<(), DrillError> {
    let h = household(play, "s3")?;
    let attacker = fresh_address();
    let from = play.world.height()?;
    let vault = vault_of(&h, "standard")?;
    unapproved_unvault(play, &vault, &attacker, from)?;
    play.outcome = format!("the unvault was cancelled; the attacker got {}", btc(play.extracted_sats));
    Ok(())
}

fn s4(play: &mut Play) -> Result<(), DrillError> {
    let h = household(play, "s4")?;
    // After the duress code, nothing but the hot wallet (DESIGN G1).
    play.allowance_sats = play.hot_wallet_sats;
    let attacker = fresh_address();
    let from = play.world.height()?;
    let client = h.client_id()?;
    // The duress code: the view is the normal one, and the co-signer is told.
    let event = Instant::now();
    let view = h.owner_json(&["status"], &[DURESS])?;
    play.note("attacker", "action", "makes the owner unlock: the owner types the duress code");
    play.check(view == h.status()?, "the duress view differs from the real one");
    play.expect_alarm("duress", event, |a| a["client"] == client.as_str());
    // The allowance really spends: that is what the attacker gets.
    let take = play.hot_wallet_sats.saturating_sub(20_000);
    let sent = h.owner_json(&["spend", &attacker.to_string(), &btc_arg(take)], &[DURESS])?;
    play.note("attacker", "tx", format!("takes {} from the hot wallet: {}", btc(take), stage(&sent)));
    // A vault spend seems to proceed; the towers cancel it late and quietly.
    let asked = h.owner_json(&["spend", &attacker.to_string(), "0.03"], &[DURESS, &h.phrase])?;
    play.note("attacker", "tx", format!("asks for 0.03 BTC from a vault and is shown: {}", stage(&asked)));
    play.check(
        stage(&asked) == "unlocking",
        format!("under duress the vault spend does not look approved: {asked}"),
    );
    let vault = h.vaults()?.into_iter().find(|v| v["unvaulted"] == true).ok_or(DrillError::Step {
        what: "the duress vault spend".into(),
        why: "no vault was unvaulted".into(),
    })?;
    let cancelled = Cancelled::watch(&vault)?;
    let unvault_height = play.mine(1)?;
    let mut cancelled_at = None;
    for _ in 0..DELAY + 1 {
        if cancelled.confirmed(play)? {
            cancelled_at = Some(play.world.height()?);
            break;
        }
        play.world.mine(1)?;
    }
    // Late: the towers wait until the spend leaf is about to open, so the captor, watching
    // the chain, sees the spend proceed for most of DELAY.
    let late = unvault_height + DELAY - vigil_tower::watch::DURESS_MARGIN_BLOCKS;
    match cancelled_at {
        Some(at) => {
            play.note("tower", "tx", format!("the unvault was cancelled quietly, confirmed at block {at}"));
            play.check(at >= late, format!("the duress cancel came at block {at}, before {late}: not late"));
        }
        None if cancelled.unvault_mined(play)? => {
            play.fail("the duress unvault confirmed and was not cancelled by DELAY")
        }
        None => play.fail("the duress spend's unvault never confirmed, unlike a real spend's"),
    }
    play.mine(2)?;
    extracted(play, &attacker, from)?;
    play.note("attacker", "action", format!("lets the owner go with {}", btc(play.extracted_sats)));

    // The guardians sweep every vault to the deep vault.
    let panic_id = {
        use vigil_policy::bitcoin::hex::DisplayHex;
        use vigil_policy::bitcoin::secp256k1::{rand, SecretKey};
        SecretKey::new(&mut rand::thread_rng()).secret_bytes().to_lower_hex_string()
    };
    let not_after = (play.world.height()? + 100).to_string();
    for g in 0..THRESHOLD {
        h.guardian_json(g, &["panic", "--id", &panic_id, "--not-after", &not_after], true)?;
    }
    play.note("guardians", "action", "sign a panic: sweep every vault to the deep vault");
    let swept = wait_for_sweep(play, &h, 12)?;
    play.note("towers", "tx", format!("{} swept to the deep vault", btc(swept)));
    play.check(
        swept > 0 && h.status()?["vault_sat"].as_u64() == Some(0),
        "the panic did not sweep every vault to the deep vault",
    );
    let back = fast_path_home(play, &h)?;
    play.outcome = format!(
        "the attacker got {} (the hot wallet); the vault spend was cancelled late; {} swept and {} returned at once",
        btc(play.extracted_sats),
        btc(swept),
        btc(back)
    );
    Ok(())
}

fn s5(play: &mut Play) -> Result<(), DrillError> {
    use vigil_tower::wire::{sign, sign_request, Approval, RegisterApproval};
    // Three standard vaults: together above the velocity budget.
    let h = household_with(play, "s5", &[4_000_000, 4_000_000, 4_000_000, 30_000_000])?;
    let attacker = fresh_address();
    let from = play.world.height()?;
    // The captor owns the co-signer's server: its sealed key and the passphrase beside it.
    let dir = play.world.dir.join("cosigner");
    let passphrase = std::fs::read_to_string(dir.join("passphrase"))?;
    let master = vigil_cosigner::keys::MasterKey::open(
        &dir.join("cosigner.key"),
        passphrase.trim_end().as_bytes(),
        vigil_policy::bitcoin::Network::Regtest,
    )
    .map_err(step("opening the co-signer's key"))?;
    let policy = vigil_policy::Policy::from_toml(&std::fs::read_to_string(h.policy())?)
        .map_err(step("reading the policy"))?;
    let account =
        (0..1_000).find(|a| master.auth_key(*a) == policy.cosigner.auth_key()).ok_or(DrillError::Step {
            what: "the household's co-signer account".into(),
            why: "not found".into(),
        })?;
    let key = master.auth_keypair(account);
    play.note(
        "attacker",
        "action",
        "owns the co-signer: its sealed key, opened with the passphrase beside it",
    );
    // The owner, coerced, takes the allowance and asks for every standard vault.
    let take = play.hot_wallet_sats.saturating_sub(20_000);
    h.owner_json(&["spend", &attacker.to_string(), &btc_arg(take)], &[REAL])?;
    let mut asked = Vec::new();
    for _ in 0..3 {
        asked.push(answer(
            &h.owner(&["spend", &attacker.to_string(), "0.035", "--json"], &[REAL, &h.phrase])?,
        ));
    }
    play.note(
        "attacker",
        "tx",
        format!("takes the allowance; asks for each standard vault: {}", asked.join(", ")),
    );
    // Every vault not yet unvaulted gets an approval the co-signer signs alone, at every
    // tower; then its unvault.
    let client = h.client_id()?;
    let tip = play.world.height()?;
    let left: Vec<Value> = h.vaults()?.into_iter().filter(|v| v["unvaulted"] != true).collect();
    let mut forged = Vec::new();
    let (mut accepted, mut refusals) = (0, Vec::new());
    for v in &left {
        let unvault = unvault_of(v)?;
        let approval = Approval {
            vault_outpoint: outpoint(v)?.to_string(),
            unvault_txid: unvault.compute_txid().to_string(),
            spend_txid: unvault.compute_txid().to_string(),
            policy_version: policy.version,
            expiry_height: tip + 100,
            counter: 1_000,
        };
        let signatures = vec![sign(&approval.digest(), &key)];
        for (n, t) in play.world.towers.iter().enumerate() {
            // Above the co-signer's own counter for this key (it counts seconds).
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let nonce = now.as_secs() + 100 + n as u64;
            let body = serde_json::to_vec(&RegisterApproval {
                nonce,
                policy_id: client.clone(),
                approval: approval.clone(),
                signatures: signatures.clone(),
                duress: false,
            })
            .map_err(step("an approval"))?;
            let tower_key: vigil_policy::bitcoin::secp256k1::PublicKey =
                t.public_key.parse().map_err(step("a tower's key"))?;
            let path = "/v1/approvals";
            let (k, sig) = sign_request(&key, &tower_key.x_only_public_key().0, path, &body);
            let taken = ureq::post(&format!("{}{path}", t.service.url))
                .set("x-vigil-key", &k)
                .set("x-vigil-signature", &sig)
                .set("content-type", "application/json")
                .send_bytes(&body);
            match taken {
                Ok(_) => accepted += 1,
                Err(ureq::Error::Status(_, r)) => refusals.push(r.into_string().unwrap_or_default()),
                Err(e) => refusals.push(e.to_string()),
            }
        }
        forged.push((v.clone(), unvault));
    }
    play.note(
        "co-signer",
        "action",
        format!(
            "signs approvals alone for {} vaults (one guarded, one over the velocity budget); the towers take {accepted} of {}",
            forged.len(),
            forged.len() * play.world.towers.len()
        ),
    );
    play.check(
        forged.len() == 2 && accepted == play.world.towers.len() && refusals.len() == play.world.towers.len(),
        format!(
            "the towers took {accepted} forged approvals for {} vaults: only the standard one's",
            forged.len()
        ),
    );
    refusals.dedup();
    for r in refusals {
        play.note("tower", "action", format!("refuses one: {r}"));
    }
    let event = Instant::now();
    for (_, unvault) in &forged {
        use vigil_chain::ChainBackend;
        let _ = play.world.rpc.broadcast(unvault);
    }
    play.note("attacker", "tx", format!("broadcasts their {} unvaults", forged.len()));
    let first =
        forged.first().map(|(v, _)| outpoint(v)).transpose()?.map(|o| o.to_string()).unwrap_or_default();
    play.expect_alarm("unvault-cancelled", event, |a| a["vault"] == first.as_str());
    // The approved spends complete after DELAY; the forged ones were cancelled.
    play.mine(1)?;
    let waiting = h.owner_json(&["spend", "--resume"], &[REAL])?;
    let opens = waiting
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["progress"]["spendable_from_height"].as_u64())
        .max();
    let tip = play.world.height()?;
    play.mine((opens.unwrap_or(u64::from(tip)) as u32).saturating_sub(tip))?;
    let sent = h.owner_json(&["spend", "--resume"], &[REAL])?;
    play.note(
        "attacker",
        "tx",
        format!(
            "DELAY passed: {}",
            sent.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["progress"]["stage"].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    play.mine(1)?;
    for (v, _) in &forged {
        let cancelled = Cancelled::watch(v)?;
        let done = cancelled.confirmed(play)?;
        play.check(done, format!("the forged approval of vault {} was not cancelled", v["outpoint"]));
    }
    extracted(play, &attacker, from)?;
    let from_vaults = play.extracted_sats.saturating_sub(take);
    play.check(
        from_vaults <= VELOCITY,
        format!("{from_vaults} sats left the vaults: above the velocity budget"),
    );
    play.outcome = format!(
        "{} from the hot wallet and {} from standard vaults (velocity budget {}); every approval the co-signer signed alone was cancelled",
        btc(take),
        btc(from_vaults),
        btc(VELOCITY)
    );
    Ok(())
}

fn s6(play: &mut Play) -> Result<(), DrillError> {
    let h = household(play, "s6")?;
    let attacker = fresh_address();
    let from = play.world.height()?;
    for t in play.world.towers.iter_mut().skip(1) {
        t.service.kill();
    }
    play.note("attacker", "action", "two of the three towers are down (SIGKILL)");
    let vault = vault_of(&h, "standard")?;
    let result = unapproved_unvault(play, &vault, &attacker, from);
    for t in play.world.towers.iter_mut().skip(1) {
        t.service.start()?;
    }
    play.note("chain", "action", "the two towers are back");
    result?;
    play.outcome = format!("the one tower left cancelled it; the attacker got {}", btc(play.extracted_sats));
    Ok(())
}

fn s7(play: &mut Play) -> Result<(), DrillError> {
    let h = household(play, "s7")?;
    let attacker = fresh_address();
    let from = play.world.height()?;
    let client = h.client_id()?;
    let event = Instant::now();
    let asked = h.owner_json(&["spend", &attacker.to_string(), "0.2"], &[REAL, &h.phrase])?;
    let id = asked[0]["id"].as_u64().unwrap_or_default().to_string();
    play.note(
        "attacker",
        "action",
        format!("makes the owner ask the guardians for 0.2 BTC: {}", stage(&asked)),
    );
    play.expect_alarm("approval-needed", event, |a| a["client"] == client.as_str());
    h.guardian_json(0, &["deny", &id, "--yes"], true)?;
    play.note("guardians", "action", "guardian 1 cannot reach the owner and denies");
    h.guardian_json(1, &["lockdown", "--blocks", "144"], true)?;
    play.note("guardians", "action", "guardian 2 locks everything down for 144 blocks");
    let denied = h.owner_json(&["spend", "--resume"], &[REAL])?;
    play.check(stage(&denied) == "denied", format!("the denied spend still stands: {denied}"));
    // Under the lockdown, a spend within the limits is refused too.
    let again = h.owner(&["spend", &attacker.to_string(), "0.03", "--json"], &[REAL, &h.phrase])?;
    play.note(
        "attacker",
        "action",
        format!("tries a standard vault: {}", if again.ok { "asked" } else { "refused" }),
    );
    play.check(!again.ok, "a vault spend was taken under the guardians' lockdown");
    play.mine(DELAY + 2)?;
    extracted(play, &attacker, from)?;
    let status = h.status()?;
    play.check(
        status["vault_sat"].as_u64() == Some(VAULTS.iter().sum()),
        format!("a vault moved under the lockdown: {status}"),
    );
    play.outcome = format!("denied; the lockdown held; the attacker got {}", btc(play.extracted_sats));
    Ok(())
}

fn s8(play: &mut Play) -> Result<(), DrillError> {
    let h = household(play, "s8")?;
    // The duress code from the first unlock: nothing but the hot wallet (DESIGN G1).
    play.allowance_sats = play.hot_wallet_sats;
    let attacker = fresh_address();
    let from = play.world.height()?;
    let client = h.client_id()?;
    // A day is 144 blocks; each day the attacker tries every path again, the owner giving
    // the duress code as the family agreed.
    for day in 1..=7 {
        let event = Instant::now();
        let view = h.owner(&["status", "--json"], &[DURESS])?;
        play.check(view.ok, format!("day {day}: the duress unlock failed: {}", view.err));
        if day == 1 {
            let take = play.hot_wallet_sats.saturating_sub(20_000);
            h.owner_json(&["spend", &attacker.to_string(), &btc_arg(take)], &[DURESS])?;
            play.note("attacker", "tx", format!("day 1: takes {} from the hot wallet", btc(take)));
            play.expect_alarm("duress", event, |a| a["client"] == client.as_str());
        }
        let asked = h.owner(&["spend", &attacker.to_string(), "0.03", "--json"], &[DURESS, &h.phrase])?;
        let big = h.owner(&["spend", &attacker.to_string(), "0.2", "--json"], &[DURESS, &h.phrase])?;
        // The recovery leaves (open after T_RECOVER, shorter than a week here): the owner can
        // prepare one, but it needs the guardians' signatures, which they do not give.
        let psbt = h.dir.join(format!("day-{day}.psbt"));
        let p = psbt.to_str().unwrap_or_default();
        let prepared = h.owner(
            &["recover", "--to", &attacker.to_string(), "--psbt", p, "--json"],
            &[DURESS, &h.phrase],
        )?;
        let finish =
            if prepared.ok { h.owner(&["recover", "--finish", p, "--json"], &[DURESS])? } else { prepared };
        play.check(!finish.ok, format!("day {day}: a recovery without the guardians went out"));
        // The unvaults still in the owner's records, broadcast as they are.
        let mut sent = 0;
        for v in h.vaults()? {
            let hex = v["unvault"].as_str().unwrap_or_default();
            sent += usize::from(play.world.rpc.call("sendrawtransaction", serde_json::json!([hex])).is_ok());
        }
        play.note(
            "attacker",
            "action",
            format!(
                "day {day}: a vault spend ({}), a guarded one ({}), a recovery to the attacker ({}), \
                 {sent} unvaults broadcast",
                answer(&asked),
                answer(&big),
                answer(&finish)
            ),
        );
        play.mine(144)?;
    }
    extracted(play, &attacker, from)?;
    let status = h.status()?;
    let kept = holdings(&status) - status["allowance_sat"].as_u64().unwrap_or(0);
    play.check(
        kept + play.extracted_sats + 200_000 > play.at_risk_sats,
        format!("the household kept {kept} of {} sats: more than fees went", play.at_risk_sats),
    );
    play.note("attacker", "action", format!("gives up after 7 days with {}", btc(play.extracted_sats)));
    play.outcome = format!(
        "after 1,008 blocks the attacker has {} (the hot wallet); the household keeps {} in custody or cancelled back",
        btc(play.extracted_sats),
        btc(kept)
    );
    Ok(())
}

fn s9(play: &mut Play) -> Result<(), DrillError> {
    use vigil_tower::store::TowerStore;
    let h = household(play, "s9")?;
    let client = h.client_id()?;
    // The rogue operator stops the honest process and broadcasts what its store holds.
    play.world.towers[0].service.kill();
    let path = play.world.dir.join("tower-1/data/tower.sqlite");
    let mut store =
        vigil_tower::store::SqliteStore::open(&path).map_err(step("opening the rogue tower's store"))?;
    let mut vaults = Vec::new();
    store.load_vaults(&mut |v| vaults.push(v)).map_err(step("reading the rogue tower's vaults"))?;
    drop(store);
    vaults.retain(|v| v.policy_id == client);
    let ours: Vec<String> = vaults.iter().map(|v| v.outpoint.to_string()).collect();
    let mut sent = 0;
    let event = Instant::now();
    let rpc = &play.world.rpc;
    for (i, v) in vaults.iter().enumerate() {
        // One vault the long way (its unvault, then the unvault's emergency), the rest by E.
        let txs: Vec<&vigil_policy::bitcoin::Transaction> =
            if i == 0 { vec![&v.unvault, &v.unvault_emergencies[0]] } else { vec![&v.emergencies[0]] };
        for tx in txs {
            use vigil_chain::ChainBackend;
            sent += usize::from(rpc.broadcast(tx).is_ok());
        }
    }
    play.note(
        "tower",
        "tx",
        format!("tower-1 goes rogue: {sent} emergency transactions broadcast for {} vaults", vaults.len()),
    );
    play.check(
        vaults.len() == VAULTS.len() && sent == vaults.len() + 1,
        format!("the rogue tower held {} vaults and got {sent} transactions out", vaults.len()),
    );
    play.world.towers[0].service.start()?;
    play.expect_alarm("unordered-emergency", event, |a| ours.iter().any(|o| a["vault"] == o.as_str()));
    let swept = wait_for_sweep(play, &h, 6)?;
    play.note("chain", "tx", format!("{} landed in the deep vault", btc(swept)));
    let back = fast_path_home(play, &h)?;
    let vaulted: u64 = VAULTS.iter().sum();
    play.check(
        vaulted - back.min(vaulted) < 100_000,
        format!("{back} of {vaulted} sats came back: more than fees lost"),
    );
    play.outcome =
        format!("{} swept by the rogue tower, {} back with the owner in one block", btc(swept), btc(back));
    Ok(())
}

fn s10(play: &mut Play) -> Result<(), DrillError> {
    let h = household(play, "s10")?;
    let total = play.at_risk_sats;
    play.world.cosigner.kill();
    play.note("co-signer", "action", "the co-signer is gone for good (SIGKILL, never restarted)");
    let ours: Vec<String> =
        h.vaults()?.iter().map(|v| v["outpoint"].as_str().unwrap_or_default().to_owned()).collect();
    let event = Instant::now();
    let sent = h.owner_json(&["recover", "--unvault"], &[REAL])?;
    play.note(
        "owner",
        "tx",
        format!("unvaults every vault ({} sent); the towers cancel them", sent["unvaults_sent"]),
    );
    play.expect_alarm("unvault-cancelled", event, |a| ours.iter().any(|o| a["vault"] == o.as_str()));
    // Mine until every coin's recovery leaf is open.
    let mut survey = Value::Null;
    for _ in 0..10 {
        play.world.mine(1)?;
        survey = h.owner_json(&["recover"], &[REAL])?;
        let later = survey["later"].as_array().cloned().unwrap_or_default();
        if later.iter().filter(|c| c["kind"] == "cancelled").count() == VAULTS.len() {
            break;
        }
    }
    let opens = survey["later"].as_array().into_iter().flatten().filter_map(|c| c["opens_at"].as_u64()).max();
    let tip = play.world.height()?;
    play.mine((opens.unwrap_or(u64::from(tip)) as u32).saturating_sub(tip))?;
    let home = fresh_address();
    let psbt = h.dir.join("recovery.psbt");
    let p = psbt.to_str().unwrap_or_default();
    let prepared = h.owner_json(&["recover", "--to", &home.to_string(), "--psbt", p], &[REAL, &h.phrase])?;
    play.check(
        prepared["later"].as_array().is_some_and(|l| l.is_empty()),
        format!("coins still locked after T_RECOVER: {prepared}"),
    );
    for g in 0..THRESHOLD {
        h.guardian_json(g, &["sign-recovery", p, "--yes"], true)?;
    }
    play.note("guardians", "action", format!("{THRESHOLD} guardians sign the recovery"));
    let finished = h.owner_json(&["recover", "--finish", p], &[REAL])?;
    let from = play.world.height()?;
    play.note(
        "owner",
        "tx",
        format!("sends everything home through the recovery leaves: {}", finished["stage"]),
    );
    play.mine(1)?;
    let back = play.world.received(&home.script_pubkey(), from)?;
    // The allowance needs no co-signer: it stays the owner's, spendable as ever.
    let locked = total - play.hot_wallet_sats;
    play.check(
        back > 0 && locked - back.min(locked) < 100_000,
        format!("recovered {back} of {locked} sats: more than fees lost"),
    );
    play.outcome = format!(
        "recovered {} of the {} the co-signer's absence held, through the recovery leaves (the rest: fees)",
        btc(back),
        btc(locked)
    );
    Ok(())
}
