//! The owner's commands, run as a person runs them, against a real chain, co-signer and towers:
//! `vigil init` → `receive` → `vault` → `status` → `lockdown`; the duress code says the same
//! things and leaves the same files.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use vigil_chain::ChainBackend;
use vigil_drill::household::words_between;
use vigil_policy::bitcoin::hashes::{sha256, Hash};
use vigil_policy::bitcoin::{Address, Amount};
use vigil_policy::example::{account_key, ExamplePolicy};
use vigil_testenv::cosigner::CosignerProcess;
use vigil_testenv::process::{vigil_exe, vigil_node, Node, TowerOptions, TowerProcess};
use vigil_testenv::proxy::CountingProxy;
use vigil_testenv::wallet::{mine, Wallet};
use vigil_testenv::webhook::webhook;
use vigil_testenv::{eventually, pty};

const REAL: &str = "2468";
const DURESS: &str = "1357";

/// Starts `vigil ARGS --wallet DIR` with `input` typed, one line each.
fn start(dir: &Path, args: &[&str], input: &[&str], log: &str, output: fn() -> Stdio) -> std::process::Child {
    let mut child = Command::new(vigil_exe())
        .args(args)
        .args(["--wallet", dir.to_str().unwrap()])
        .env("RUST_LOG", log)
        .stdin(Stdio::piped())
        .stdout(output())
        .stderr(output())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in input {
        writeln!(stdin, "{line}").unwrap();
    }
    child
}

/// Runs `vigil ARGS --wallet DIR`, typing `input` lines; (success, stdout, stderr).
fn vigil(dir: &Path, args: &[&str], input: &[&str]) -> (bool, String, String) {
    let out = start(dir, args, input, "warn", Stdio::piped).wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(dir: &Path, args: &[&str], input: &[&str]) -> Value {
    let (ok, out, err) = vigil(dir, &[args, &["--json"]].concat(), input);
    assert!(ok, "vigil {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Every file of the wallet: name → (size, sha256); the request counter's content is the
/// time, so only its size is kept.
fn listing(dir: &Path) -> BTreeMap<String, (u64, String)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            let hash = if name == "nonce" { String::new() } else { sha256::Hash::hash(&bytes).to_string() };
            (name, (bytes.len() as u64, hash))
        })
        .collect()
}

struct Services {
    node: Node,
    co: CosignerProcess,
    towers: Vec<TowerProcess>,
    /// Counting proxies in front of the co-signer and each tower, when asked for: the
    /// wallet's policy names them instead of the services.
    proxies: Option<(CountingProxy, Vec<CountingProxy>)>,
    /// An Electrum server the wallet reads the chain from instead of the node, when set.
    electrs: Option<vigil_testenv::process::Electrs>,
}

fn services(extra: &str, proxied: bool) -> Services {
    services_on(vigil_node(), extra, proxied)
}

/// The services on `node`: `vigil node`, or a real bitcoind.
fn services_on(node: Node, extra: &str, proxied: bool) -> Services {
    let co = CosignerProcess::new(&node, extra);
    let towers: Vec<TowerProcess> =
        (0..2).map(|i| TowerProcess::configured(&node, &[], i, TowerOptions::default())).collect();
    let proxies = proxied.then(|| {
        (CountingProxy::new(&co.url), towers.iter().map(|t| CountingProxy::new(&t.api.url)).collect())
    });
    Services { node, co, towers, proxies, electrs: None }
}

impl Services {
    fn cosigner_url(&self) -> String {
        self.proxies.as_ref().map_or(self.co.url.clone(), |(c, _)| c.url.clone())
    }

    fn tower_url(&self, i: usize) -> String {
        self.proxies.as_ref().map_or(self.towers[i].api.url.clone(), |(_, t)| t[i].url.clone())
    }

    /// Mines `blocks` and waits until the wallet's chain source has them.
    fn mine(&self, blocks: u32, to: &Address) {
        mine(&self.node.rpc, blocks, to);
        if let Some(electrs) = &self.electrs {
            vigil_testenv::process::wait_indexed(electrs, &self.node);
        }
    }
}

/// How the wallet reaches the chain: the node's RPC, or electrs when the services have one.
fn chain_args(s: &Services) -> Vec<String> {
    match &s.electrs {
        Some(e) => vec!["--chain-url".to_owned(), e.address.clone(), "--electrum".into()],
        None => {
            let url = format!("http://127.0.0.1:{}", s.node.port);
            ["--chain-url", &url, "--chain-user", "vigil", "--chain-password", "secret"]
                .map(str::to_owned)
                .to_vec()
        }
    }
}

/// `vigil init --restore --cosigner URL` (in that order: a test leaves out the co-signer),
/// then the services' chain arguments: a restore from the co-signer's copy of the policy.
fn restore_from_cosigner(s: &Services) -> Vec<String> {
    let mut args = ["init", "--restore", "--cosigner", &s.co.url].map(str::to_owned).to_vec();
    args.extend(chain_args(s));
    args
}

/// The first 16 hex characters of the id of the policy `text`: what the owner writes on paper
/// at setup, and types at a restore.
fn id_on_paper(text: &str) -> String {
    sha256::Hash::hash(text.as_bytes()).to_string().chars().take(16).collect()
}

fn init(s: &Services, dir: &Path) -> (bool, String, String) {
    let guardians: Vec<String> = ExamplePolicy::default().keys().guardians.iter().map(account_key).collect();
    init_with(s, dir, &guardians)
}

fn init_with(s: &Services, dir: &Path, guardians: &[String]) -> (bool, String, String) {
    init_with_extra(s, dir, guardians, &[])
}

fn init_with_extra(s: &Services, dir: &Path, guardians: &[String], extra: &[&str]) -> (bool, String, String) {
    let towers: Vec<String> = s
        .towers
        .iter()
        .enumerate()
        .map(|(i, t)| format!("tower-{i},{},{},{}", s.tower_url(i), t.public_key, t.token()))
        .collect();
    let chain = chain_args(s);
    let token = s.co.token();
    let cosigner_url = s.cosigner_url();
    let mut args = vec!["init", "--no-phrase-check", "--network", "regtest"];
    args.extend(chain.iter().map(String::as_str));
    args.extend([
        "--cosigner",
        &cosigner_url,
        "--cosigner-token",
        &token,
        "--delay",
        "10",
        "--recovery",
        "40",
        "--deep-vault",
        "60",
    ]);
    for t in &towers {
        args.extend(["--tower", t]);
    }
    for g in guardians {
        args.extend(["--guardian", g]);
    }
    args.extend(extra);
    vigil(dir, &args, &[REAL, REAL, DURESS, DURESS])
}

/// The vault spend under way (approved, its unvault mined) carried on with `spend --resume`:
/// not co-signed one block before DELAY is over, sent at it, then confirmed.
fn spend_to_the_end(s: &Services, dir: &Path, payer: &Wallet) {
    let waiting = json(dir, &["spend", "--resume"], &[REAL]);
    let from = waiting[0]["progress"]["spendable_from_height"].as_u64().unwrap() as u32;
    let tip = s.node.rpc.tip().unwrap().height;
    mine(&s.node.rpc, from - tip - 1, &payer.address());
    let early = json(dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(early[0]["progress"]["stage"], "unlocking", "one block early: {early}");
    mine(&s.node.rpc, 1, &payer.address());
    let sent = json(dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(sent[0]["progress"]["stage"], "sent", "{sent}");
    mine(&s.node.rpc, 1, &payer.address());
    let done = json(dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(done[0]["progress"]["stage"], "done", "{done}");
    let txid = done[0]["progress"]["txid"].as_str().unwrap().parse().unwrap();
    assert!(
        matches!(s.node.rpc.transaction_info(&txid).unwrap(), Some((_, Some(_)))),
        "the payment confirmed"
    );
}

/// The recovery phrase `vigil init` showed (the 24 numbered words after "STEP 1").
fn phrase_shown(init_stderr: &str) -> String {
    words_between(init_stderr, "STEP 1", "STEP 2")
}

#[test]
fn an_owner_sets_up_receives_vaults_and_locks_down_from_the_command_line() {
    let (url, alarms) = webhook();
    let s = services(&format!("[alarms]\nwebhooks = [{url:?}]\n"), false);
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("wallet");
    let payer = Wallet::new();
    mine(&s.node.rpc, 120, &payer.address());

    let (ok, out, err) = init(&s, &dir);
    assert!(ok, "{err}");
    assert!(out.contains("Your wallet is ready"), "{out}");
    let phrase = phrase_shown(&err);
    assert_eq!(phrase.split(' ').count(), 24, "{err}");
    assert!(err.contains("AWAY FROM HOME"), "the backup phrase's warning: {err}");
    assert!(!dir.join("setup.json").exists(), "the setup finished");
    let policy = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    assert!(policy.contains("auth_keys"), "the owner's auth key is named, not derived");
    // A second init changes nothing.
    let (ok, _, err) = init(&s, &dir);
    assert!(!ok && err.contains("already a wallet"), "{err}");

    // Receive, get paid, see it.
    let received = json(&dir, &["receive"], &[REAL]);
    let address: Address =
        received["address"].as_str().unwrap().parse::<Address<_>>().unwrap().assume_checked();
    payer.pay(&s.node.rpc, 1, address.script_pubkey(), Amount::from_sat(30_000_000));
    mine(&s.node.rpc, 1, &payer.address());
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["intake_sat"], 30_000_000, "{status}");
    assert_eq!(status["cosigner_reachable"], true);
    assert!(status["towers"].as_array().unwrap().iter().all(|t| t["reachable"] == true), "{status}");

    // A vault, through the co-signer's ceremony: protected, then funded. The phrase signs
    // (typed in capitals with extra spaces it is still the phrase); a wrong one is asked again.
    let typed = phrase.replacen(' ', "  ", 1).to_uppercase();
    let (ok, out, err) =
        vigil(&dir, &["vault", "0.2", "--json"], &[REAL, "abandon abandon", "abandon", &typed]);
    assert!(ok, "{err}");
    assert_eq!(err.matches("Try again").count(), 2, "{err}");
    let made: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (made["state"].as_str(), made["kind"].as_str()),
        (Some("protected"), Some("guarded")),
        "{made}"
    );
    mine(&s.node.rpc, 1, &payer.address());
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["vaults"][0]["state"], "protected", "{status}");
    assert_eq!(status["vault_sat"], 20_000_000);
    for t in &s.towers {
        assert_eq!(t.metric("vigil_tower_vaults_watched"), Some(1), "every tower watches the vault");
    }

    // Bad input changes nothing and says why.
    let (ok, _, err) = vigil(&dir, &["vault", "5"], &[REAL]);
    assert!(!ok && err.contains("not enough coins"), "{err}");
    let (ok, _, err) = vigil(&dir, &["vault", "lots"], &[REAL]);
    assert!(!ok && err.contains("not an amount"), "{err}");
    let before = listing(&dir);
    let (ok, _, err) = vigil(&dir, &["status"], &["0000"]);
    assert!(!ok && err.contains("not right"), "{err}");
    assert_eq!(listing(&dir).keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());

    // A standard vault, and a spend from it: approved at once, the unvault broadcast, the
    // payment co-signed once DELAY passed, not a block before.
    let small = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(small["kind"], "standard", "{small}");
    mine(&s.node.rpc, 1, &payer.address());
    let to = Wallet::new().address().to_string();
    let (ok, _, err) = vigil(&dir, &["spend", "bcrt1qnotanaddress", "0.01"], &[]);
    assert!(!ok && err.contains("not a bitcoin address"), "{err}");
    let mainnet = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq";
    let (ok, _, err) = vigil(&dir, &["spend", mainnet, "0.01"], &[]);
    assert!(!ok && err.contains("another network"), "{err}");
    let (ok, _, err) = vigil(&dir, &["spend", &to, "3"], &[REAL, &phrase]);
    assert!(!ok && err.contains("no vault holds"), "{err}");
    let (ok, _, err) = vigil(&dir, &["spend", &to, "0.00000100"], &[REAL, &phrase]);
    assert!(!ok && err.contains("below what the network relays"), "{err}");
    let started = json(&dir, &["spend", &to, "0.01"], &[REAL, &phrase]);
    assert_eq!(started[0]["progress"]["stage"], "unlocking", "{started}");
    mine(&s.node.rpc, 1, &payer.address());
    spend_to_the_end(&s, &dir, &payer);

    // Lockdown reaches the co-signer and every tower.
    let locked = json(&dir, &["lockdown", "--blocks", "20"], &[REAL]);
    assert!(locked["cosigner"]["Ok"].as_u64().is_some(), "{locked}");
    assert!(locked["towers"].as_array().unwrap().iter().all(|t| t["error"].is_null()), "{locked}");
    let (ok, _, err) = vigil(&dir, &["lockdown", "--blocks", "0"], &[]);
    assert!(!ok && err.contains("1 to"), "{err}");

    // Panic: locked down, and the guardians asked to sweep.
    let (ok, out, err) = vigil(&dir, &["panic", "--blocks", "1008"], &[REAL]);
    assert!(ok && out.contains("guardians are alerted to sweep"), "{out}{err}");
    eventually("the guardians are asked for a panic", || {
        alarms.lock().unwrap().iter().any(|a| a["kind"] == "panic-requested").then_some(())
    });
}

#[test]
fn the_duress_code_says_the_same_and_leaves_the_same_files() {
    let (url, alarms) = webhook();
    let s = services(&format!("[alarms]\nwebhooks = [{url:?}]\n"), true);
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("wallet");
    mine(&s.node.rpc, 10, &Wallet::new().address());
    let (ok, _, err) = init(&s, &dir);
    assert!(ok, "{err}");

    let policy =
        vigil_policy::Policy::from_toml(&std::fs::read_to_string(dir.join("policy.toml")).unwrap()).unwrap();
    let owner_key = policy.owner.keys[0].auth_key().to_string();
    let (co_proxy, tower_proxies) = s.proxies.as_ref().unwrap();
    let traffic = || {
        let mut flows = co_proxy.take(&owner_key);
        flows.extend(tower_proxies.iter().flat_map(|p| p.take(&owner_key)));
        flows
    };
    traffic();
    let session = |code: &str| {
        let before = listing(&dir);
        let (ok, out, err) = vigil(&dir, &["status"], &[code]);
        assert!(ok, "{err}");
        (before, listing(&dir), out.replace(REAL, "").replace(DURESS, ""), err, traffic())
    };
    let duressed = || alarms.lock().unwrap().iter().any(|a| a["kind"] == "duress");
    let real = session(REAL);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(!duressed(), "the real code alarms nobody");
    let duress = session(DURESS);
    assert_eq!(real.2, duress.2, "the same output");
    assert_eq!(real.3, duress.3, "the same prompts and messages");
    assert_eq!(real.1, duress.1, "the same files, sizes and contents after");
    assert_eq!(real.0, real.1, "a status changes no file but the request counter");
    assert_eq!(real.4, duress.4, "the same connections, the same bytes each way");
    assert_eq!(
        real.4.len(),
        4,
        "the heartbeat, the policy's changes and one question to each tower: {:?}",
        real.4
    );
    eprintln!("connections (bytes sent, received), either code: {:?}", duress.4);
    eprintln!("files after either session:");
    for (name, (size, hash)) in &duress.1 {
        eprintln!("  {name:<16} {size:>6} bytes  {hash}");
    }
    // The co-signer got the duress heartbeat: the guardians are alarmed.
    eventually("the guardians are alarmed", || duressed().then_some(()));

    // On a real terminal: the code is not echoed, and the two sessions show the same screen.
    let wallet = dir.to_str().unwrap();
    let screen = |code: &str| {
        let t = pty::run(
            &vigil_exe(),
            &["status", "--wallet", wallet],
            &[("RUST_LOG", "warn")],
            &[("Unlock code: ", code)],
        );
        assert_eq!(t.code, 0, "{}", t.text);
        assert!(!t.text.contains(code), "the code was echoed: {}", t.text);
        t.text
    };
    let (real_screen, duress_screen) = (screen(REAL), screen(DURESS));
    assert!(real_screen.contains("Waiting to be vaulted"), "{real_screen}");
    assert_eq!(real_screen, duress_screen);
    eprintln!("the screen, either code:\n{real_screen}");

    // Ctrl-C at the hidden prompt ends the command and leaves the terminal echoing.
    let t = pty::run(&vigil_exe(), &["status", "--wallet", wallet], &[], &[("Unlock code: ", "\u{3}")]);
    assert_eq!(t.code, 130, "{}", t.text);
    assert!(t.echo_left_on, "an interrupted prompt left the terminal blind");
}

/// A wallet set up against `s` and paid `coins` coins of 0.06 BTC (confirmed) on one receive
/// address: its home (keep it alive), its directory, the recovery phrase, the payer.
struct Funded {
    _home: tempfile::TempDir,
    dir: std::path::PathBuf,
    phrase: String,
    /// The off-site backup key's phrase.
    backup: String,
    payer: Wallet,
    coins: Vec<vigil_policy::bitcoin::OutPoint>,
}

fn funded(s: &Services, coins: u32) -> Funded {
    let guardians: Vec<String> = ExamplePolicy::default().keys().guardians.iter().map(account_key).collect();
    funded_with(s, coins, &guardians)
}

fn funded_with(s: &Services, coins: u32, guardians: &[String]) -> Funded {
    funded_with_extra(s, coins, guardians, &[])
}

/// [`funded_with`], with more `vigil init` arguments.
fn funded_with_extra(s: &Services, coins: u32, guardians: &[String], extra: &[&str]) -> Funded {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("wallet");
    let payer = Wallet::new();
    mine(&s.node.rpc, 120, &payer.address());
    let (ok, _, err) = init_with_extra(s, &dir, guardians, extra);
    assert!(ok, "{err}");
    let phrase = phrase_shown(&err);
    let received = json(&dir, &["receive"], &[REAL]);
    let address: Address =
        received["address"].as_str().unwrap().parse::<Address<_>>().unwrap().assume_checked();
    let coins = (1..=coins)
        .map(|h| payer.pay(&s.node.rpc, h, address.script_pubkey(), Amount::from_sat(6_000_000)).0)
        .collect();
    s.mine(1, &payer.address());
    let backup = words_between(&err, "STEP 2", "STEP 3");
    Funded { _home: home, dir, phrase, backup, payer, coins }
}

/// Whether the wallet's state shows a step, given a count taken before the run.
type StepReached<'a> = dyn Fn(&Value, usize) -> bool + 'a;

/// Starts `vigil ARGS` typing `input`, and SIGKILLs it as soon as the wallet's state shows
/// `reached`; false if the run ended first.
fn killed_when(dir: &Path, args: &[&str], input: &[&str], reached: &dyn Fn(&Value) -> bool) -> bool {
    let mut child = start(dir, args, input, "error", Stdio::null);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let hit = loop {
        let state = std::fs::read(dir.join("state.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if state.as_ref().is_some_and(reached) {
            break true;
        }
        if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    hit
}

#[test]
fn sigkill_at_each_step_of_vault_and_spend_leaves_nothing_funded_and_unprotected_and_resumes() {
    // The co-signer answers slowly (through a proxy), so each request is in flight long
    // enough for the run to be killed while it is.
    let s = services("", true);
    let slow = &s.proxies.as_ref().unwrap().0;
    let Funded { _home, dir, phrase, payer, coins, .. } = funded(&s, 6);
    slow.set_delay(400);

    // Every coin spent (a funding broadcast) is a vault every tower watches.
    let watched = |t: &TowerProcess| t.metric("vigil_tower_vaults_watched").unwrap_or(0);
    let funded = || coins.iter().filter(|c| s.node.rpc.unspent_output(c).unwrap().is_none()).count() as u64;
    let check = |when: &str| {
        for t in &s.towers {
            assert!(
                funded() <= watched(t),
                "{when}: {} coins funded vaults, a tower watches {}",
                funded(),
                watched(t)
            );
        }
    };
    let vaults = |st: &Value| st["vaults"].as_array().map_or(0, Vec::len);
    let steps: [(&str, &StepReached<'_>); 3] = [
        ("the ceremony begun (indexes taken)", &|st, n| st["next_vault"].as_u64() > Some(n as u64)),
        ("the owner's half sent", &|st, _| !st["pending_vault"].is_null()),
        ("the vault recorded, its funding not yet broadcast", &|st, n| vaults(st) > n),
    ];
    for (what, reached) in steps {
        let before: Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
        let n = if what.starts_with("the ceremony") {
            before["next_vault"].as_u64().unwrap() as usize
        } else {
            vaults(&before)
        };
        assert!(
            killed_when(&dir, &["vault", "0.05"], &[REAL, &phrase], &|st| reached(st, n)),
            "never reached: {what}"
        );
        check(&format!("killed at {what}"));
        mine(&s.node.rpc, 1, &payer.address());
        check(&format!("killed at {what}, a block later"));
        // The next run finishes what was left and makes its own vault.
        let made = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
        assert_eq!(made["state"], "protected", "after a kill at {what}: {made}");
        mine(&s.node.rpc, 1, &payer.address());
        check(&format!("resumed after {what}"));
    }
    let status = json(&dir, &["status"], &[REAL]);
    let recorded = status["vaults"].as_array().unwrap();
    assert!(recorded.iter().all(|v| v["state"] == "protected"), "{status}");
    assert_eq!(recorded.len() as u64, funded(), "every funded vault is in the wallet: {status}");
    for t in &s.towers {
        assert_eq!(watched(t), funded());
    }

    // A spend killed with its request in flight is resumed to the same request; killed with
    // the payment signed, it is broadcast by the next run.
    let to = Wallet::new().address().to_string();
    let requested = |st: &Value| st["spends"].as_array().is_some_and(|s| !s.is_empty());
    assert!(killed_when(&dir, &["spend", &to, "0.01"], &[REAL, &phrase], &requested));
    let resumed = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(resumed.as_array().unwrap().len(), 1, "one spend, not two: {resumed}");
    assert_eq!(resumed[0]["progress"]["stage"], "unlocking", "{resumed}");
    mine(&s.node.rpc, 1, &payer.address());
    let waiting = json(&dir, &["spend", "--resume"], &[REAL]);
    let from = waiting[0]["progress"]["spendable_from_height"].as_u64().unwrap() as u32;
    let tip = s.node.rpc.tip().unwrap().height;
    mine(&s.node.rpc, from - tip, &payer.address());
    let signed = |st: &Value| st["spends"][0]["tx"].is_string();
    killed_when(&dir, &["spend", "--resume"], &[REAL], &signed);
    let again = json(&dir, &["spend", "--resume"], &[REAL]);
    assert!(["sent", "done"].contains(&again[0]["progress"]["stage"].as_str().unwrap()), "{again}");
    mine(&s.node.rpc, 1, &payer.address());
    let done = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(done[0]["progress"]["stage"], "done", "{done}");
}

#[test]
fn a_spend_whose_approval_expired_stops_and_leaves_its_vault_free_to_ask_again() {
    const EXPIRY: u32 = 4;
    let s = services(&format!("approval_expiry_blocks = {EXPIRY}"), false);
    let (_keys, guardian_keys, xpubs) = guardians_made_by_cli(2);
    let Funded { _home, dir, phrase, payer, .. } = funded_with(&s, 4, &xpubs);
    let policy = dir.join("policy.toml");
    let made = json(&dir, &["vault", "0.2"], &[REAL, &phrase]);
    assert_eq!(made["kind"], "guarded", "{made}");
    mine(&s.node.rpc, 1, &payer.address());
    let to = Wallet::new().address().to_string();
    let ask = || {
        let asked = json(&dir, &["spend", &to, "0.01"], &[REAL, &phrase]);
        assert_eq!(asked[0]["progress"]["stage"], "waiting for guardians", "{asked}");
        asked[0]["id"].as_u64().unwrap().to_string()
    };
    let approve = |id: &str, g: usize| {
        let (ok, _, err) = guardian(&guardian_keys[g], &["approve", id, "--yes"], Some(&policy));
        assert!(ok, "{err}");
    };
    let stopped = |why: &str| {
        let resumed = json(&dir, &["spend", "--resume"], &[REAL]);
        let progress = &resumed[0]["progress"];
        assert_eq!(progress["stage"], "stopped", "{resumed}");
        assert!(progress["reason"].as_str().unwrap().contains(why), "{resumed}");
        let (ok, _, err) = vigil(&dir, &["spend", "--resume"], &[REAL]);
        assert!(!ok && err.contains("no spend is under way"), "it stopped for good: {err}");
    };

    // One guardian of the two approved before the expiry: the request stops.
    let first = ask();
    approve(&first, 0);
    mine(&s.node.rpc, EXPIRY, &payer.address());
    stopped("before the guardians' quorum");
    // Asked again, approved by both in time, but resumed after the expiry: its unvault is not
    // sent (the towers would cancel it), and the vault stays put.
    let second = ask();
    assert_ne!(second, first);
    approve(&second, 0);
    approve(&second, 1);
    mine(&s.node.rpc, EXPIRY, &payer.address());
    stopped("before its unvault was sent");
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["vaults"][0]["state"], "protected", "{status}");
    // The co-signer judges an expired approval from the chain a few blocks on.
    mine(&s.node.rpc, 6, &payer.address());
    // The third time the unvault is sent in time, but confirms only after the expiry (the
    // towers saw it in time; the co-signer signs no spend of it under that approval): the
    // same spend is asked for again, approved again, and goes through.
    let third = ask();
    approve(&third, 0);
    approve(&third, 1);
    let sent = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(sent[0]["progress"]["stage"], "unlocking", "{sent}");
    // The towers look at the mempool every 50 ms: they see it before the expiry.
    std::thread::sleep(std::time::Duration::from_secs(2));
    for _ in 0..EXPIRY + 6 {
        s.node
            .rpc
            .call("vigil_generateblock", serde_json::json!([null, payer.address().to_string(), [], false]))
            .unwrap();
    }
    mine(&s.node.rpc, 10, &payer.address());
    let again = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(again[0]["progress"]["stage"], "unlocking", "{again}");
    let fourth = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(fourth[0]["progress"]["stage"], "waiting for guardians", "{fourth}");
    let fourth = fourth[0]["id"].as_u64().unwrap().to_string();
    assert_ne!(fourth, third);
    approve(&fourth, 0);
    approve(&fourth, 1);
    let done = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(done[0]["progress"]["stage"], "sent", "{done}");
    mine(&s.node.rpc, 1, &payer.address());
    let done = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(done[0]["progress"]["stage"], "done", "{done}");
}

/// `text` with every run of digits and hex (ids, txids, heights, addresses) masked.
fn masked(text: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() {
            run.push(c);
            continue;
        }
        let numeric = run.chars().any(|c| c.is_ascii_digit());
        out.push_str(if numeric { "#" } else { &run });
        run.clear();
        out.push(c);
    }
    out
}

#[test]
fn a_vault_spend_under_duress_reads_and_weighs_like_a_real_one() {
    let s = services("", false);
    let Funded { _home, dir, phrase, payer, .. } = funded(&s, 3);
    // Three vaults within the velocity limit: all three spends are the co-signer's alone.
    for _ in 0..3 {
        json(&dir, &["vault", "0.03"], &[REAL, &phrase]);
    }
    mine(&s.node.rpc, 1, &payer.address());
    // The wallet catches up with the chain first (the fundings confirmed, their change came
    // back): what follows differs only by the code.
    json(&dir, &["status"], &[REAL]);
    // The same spend asked twice, once under each code, to addresses of the same kind.
    let session = |code: &str| {
        let before = listing(&dir);
        let to = Wallet::new().address().to_string();
        let (ok, out, err) = vigil(&dir, &["spend", &to, "0.01"], &[code, &phrase]);
        assert!(ok, "{err}");
        let after = listing(&dir);
        let grown: BTreeMap<String, i64> = after
            .iter()
            .map(|(name, (size, _))| (name.clone(), *size as i64 - before[name].0 as i64))
            .collect();
        (masked(&out.replace(&to, "")), masked(&err), grown)
    };
    // A first spend, so that both measured ones find the wallet's lists in the same shape.
    session(REAL);
    let real = session(REAL);
    let duress = session(DURESS);
    assert!(real.0.contains("approved"), "{}", real.0);
    assert_eq!(real.0, duress.0, "the same answer: approved, unlocking");
    assert_eq!(real.1, duress.1, "the same prompts");
    assert_eq!(real.2, duress.2, "each file grows by the same number of bytes");
    eprintln!("a spend, either code:\n{}{}", duress.1, duress.0);
}

#[test]
fn with_the_cosigner_or_every_tower_down_nothing_is_half_done_and_it_resumes() {
    let mut s = services("", false);
    let Funded { _home, dir, phrase, payer, coins, .. } = funded(&s, 2);
    let unspent = || coins.iter().filter(|c| s.node.rpc.unspent_output(c).unwrap().is_some()).count();

    // The co-signer gone: the status says so and still answers; a vault is refused clearly.
    s.co.kill9();
    let (ok, out, err) = vigil(&dir, &["status"], &[REAL]);
    assert!(ok, "{err}");
    assert!(out.contains("Co-signer: NOT reachable") && err.contains("cannot be reached"), "{out}{err}");
    let (ok, _, err) = vigil(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert!(!ok && err.contains("cannot be reached"), "{err}");
    assert_eq!(unspent(), 2, "nothing moved");

    // The co-signer and the chain both unreachable: a lockdown still reaches every tower,
    // ending where each tower's own chain says (it used to send them height 0, refused).
    let config = dir.join("wallet.toml");
    let kept = std::fs::read_to_string(&config).unwrap();
    let node_url = format!("127.0.0.1:{}", s.node.port);
    assert!(kept.contains(&node_url), "{kept}");
    std::fs::write(&config, kept.replace(&node_url, "127.0.0.1:9")).unwrap();
    let locked = json(&dir, &["lockdown", "--blocks", "6"], &[REAL]);
    assert!(locked["cosigner"]["Err"].is_string(), "{locked}");
    assert!(locked["towers"].as_array().unwrap().iter().all(|t| t["error"].is_null()), "{locked}");
    std::fs::write(&config, kept).unwrap();
    s.co.start();

    // Every tower gone: the co-signer withholds the funding; nothing moves; once they are
    // back (the co-signer registers the vault with them by itself) the next run finishes it.
    for t in &mut s.towers {
        t.kill9();
    }
    let (ok, _, err) = vigil(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert!(!ok && err.contains("NOT moved"), "{err}");
    assert_eq!(unspent(), 2, "no funding while no tower holds the vault");
    for t in &mut s.towers {
        t.start();
    }
    let made = eventually("the interrupted vault is finished", || {
        let (ok, out, _) = vigil(&dir, &["vault", "0.05", "--json"], &[REAL, &phrase]);
        ok.then(|| serde_json::from_str::<Value>(&out).unwrap())
    });
    assert_eq!(made["state"], "protected", "{made}");
    mine(&s.node.rpc, 1, &payer.address());
    assert_eq!(unspent(), 0, "both vaults funded: the interrupted one and the new one");
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["vaults"].as_array().unwrap().len(), 2, "{status}");
}

/// A tower down when a spend is approved would cancel an unvault it saw before the
/// co-signer's push gave it the approval: the unvault waits until that tower has it. A tower
/// gone longer keeps the owner from the coins for an hour of blocks only.
#[test]
fn an_approved_unvault_waits_for_a_tower_that_missed_the_approval_and_for_a_lockdown_to_end() {
    let mut s = services("", false);
    let Funded { _home, dir, phrase, payer, .. } = funded(&s, 3);
    for _ in 0..3 {
        let made = json(&dir, &["vault", "0.03"], &[REAL, &phrase]);
        assert_eq!(made["state"], "protected", "{made}");
    }
    mine(&s.node.rpc, 1, &payer.address());
    let vaults_unspent = || {
        let status = json(&dir, &["status"], &[REAL]);
        status["vaults"].as_array().unwrap().iter().filter(|v| v["state"] == "protected").count()
    };
    let to = Wallet::new().address().to_string();

    // Tower 1 down at the approval: nothing is sent until it is back and has it.
    s.towers[1].kill9();
    let asked = json(&dir, &["spend", &to, "0.01"], &[REAL, &phrase]);
    let progress = &asked[0]["progress"];
    assert_eq!(progress["stage"], "waiting for towers", "{asked}");
    assert_eq!(progress["towers"], serde_json::json!(["tower-1"]), "{asked}");
    let again = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(again[0]["progress"]["stage"], "waiting for towers", "{again}");
    assert_eq!(vaults_unspent(), 3, "no unvault went out");
    s.towers[1].start();
    eventually("the unvault goes once tower 1 has the approval", || {
        let resumed = json(&dir, &["spend", "--resume"], &[REAL]);
        (resumed[0]["progress"]["stage"] == "unlocking").then_some(())
    });
    mine(&s.node.rpc, 1, &payer.address());
    // Not cancelled by the tower that missed it: the payment goes through.
    spend_to_the_end(&s, &dir, &payer);

    // Tower 1 gone for longer: the unvault goes without it once the wait is over.
    s.towers[1].kill9();
    let asked = json(&dir, &["spend", &to, "0.01"], &[REAL, &phrase]);
    let progress = &asked[0]["progress"];
    assert_eq!(progress["stage"], "waiting for towers", "{asked}");
    let at = progress["send_anyway_at_height"].as_u64().unwrap() as u32;
    let tip = s.node.rpc.tip().unwrap().height;
    assert_eq!(at, tip + 6, "{asked}");
    mine(&s.node.rpc, at - tip - 1, &payer.address());
    let waiting = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(waiting[0]["progress"]["stage"], "waiting for towers", "one block before: {waiting}");
    assert_eq!(vaults_unspent(), 2, "no unvault went out");
    mine(&s.node.rpc, 1, &payer.address());
    let sent = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(sent[0]["progress"]["stage"], "unlocking", "{sent}");
    mine(&s.node.rpc, 1, &payer.address());
    assert_eq!(vaults_unspent(), 1, "the unvault went out");
    spend_to_the_end(&s, &dir, &payer);

    // Locked down once approved (here by the owner, tower 1 still down): sent, the unvault
    // would be cancelled into the recovery path. It waits for the lockdown's end, though the
    // wait for tower 1 is over before.
    let asked = json(&dir, &["spend", &to, "0.01"], &[REAL, &phrase]);
    assert_eq!(asked[0]["progress"]["stage"], "waiting for towers", "{asked}");
    let locked = json(&dir, &["lockdown", "--blocks", "8"], &[REAL]);
    let until = locked["cosigner"]["Ok"].as_u64().unwrap_or_else(|| panic!("{locked}"));
    let waiting = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(waiting[0]["progress"]["stage"], "locked down", "{waiting}");
    assert_eq!(waiting[0]["progress"]["until_height"].as_u64(), Some(until), "{waiting}");
    let tip = u64::from(s.node.rpc.tip().unwrap().height);
    mine(&s.node.rpc, (until - tip - 1) as u32, &payer.address());
    let waiting = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(waiting[0]["progress"]["stage"], "locked down", "one block before: {waiting}");
    assert_eq!(vaults_unspent(), 1, "no unvault went out");
    mine(&s.node.rpc, 1, &payer.address());
    eventually("the unvault goes once the lockdown is over", || {
        let resumed = json(&dir, &["spend", "--resume"], &[REAL]);
        (resumed[0]["progress"]["stage"] == "unlocking").then_some(())
    });
    mine(&s.node.rpc, 1, &payer.address());
    spend_to_the_end(&s, &dir, &payer);
}

/// `vigil guardian ARGS` for the guardian whose key is `key` (passphrase in `pass`).
/// `n` guardians, each made with `vigil guardian init`: their directory, key files and keys.
fn guardians_made_by_cli(n: usize) -> (tempfile::TempDir, Vec<std::path::PathBuf>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<std::path::PathBuf> = (0..n).map(|i| dir.path().join(format!("g{i}.key"))).collect();
    let keys = files
        .iter()
        .map(|k| {
            let (ok, out, err) = guardian(k, &["init", "--network", "regtest"], None);
            assert!(ok, "{err}");
            serde_json::from_str::<Value>(&out).unwrap()["key"].as_str().unwrap().to_owned()
        })
        .collect();
    (dir, files, keys)
}

/// `vigil recover --finish PSBT` sends the recovery; once mined, `amount` is at `to`.
fn recovery_arrives(s: &Services, dir: &Path, payer: &Wallet, psbt: &str, amount: u64, to: &Address) {
    let sent = json(dir, &["recover", "--finish", psbt], &[REAL]);
    assert_eq!(sent["stage"], "sent", "{sent}");
    mine(&s.node.rpc, 1, &payer.address());
    let txid: vigil_policy::bitcoin::Txid = sent["txid"].as_str().unwrap().parse().unwrap();
    let arrived =
        s.node.rpc.unspent_output(&vigil_policy::bitcoin::OutPoint { txid, vout: 0 }).unwrap().unwrap();
    assert_eq!((arrived.value.to_sat(), arrived.script_pubkey), (amount, to.script_pubkey()));
}

/// Every guardian of `keys` signs the same panic: the towers sweep the wallet's vaults to the
/// deep vault; the wallet's status once `sat` are there.
fn panic_to_the_deep_vault(
    s: &Services,
    dir: &Path,
    payer: &Wallet,
    keys: &[std::path::PathBuf],
    policy: &Path,
    sat: u64,
) -> Value {
    let id = "ab".repeat(32);
    let not_after = (s.node.rpc.tip().unwrap().height + 100).to_string();
    let mut last = Value::Null;
    for k in keys {
        let (ok, out, err) = guardian(k, &["panic", "--id", &id, "--not-after", &not_after], Some(policy));
        assert!(ok, "{err}");
        last = serde_json::from_str(&out).unwrap();
    }
    // The guardian whose signature made the quorum handed the panic to every tower itself too.
    told_every_tower_directly(&last);
    eventually("the vaults are swept to the deep vault", || {
        mine(&s.node.rpc, 1, &payer.address());
        let v = json(dir, &["status"], &[REAL]);
        (v["deep_vault_sat"].as_u64() == Some(sat)).then_some(v)
    })
}

fn guardian(key: &Path, args: &[&str], policy: Option<&Path>) -> (bool, String, String) {
    let pass = key.with_extension("pass");
    std::fs::write(&pass, "guardian passphrase\n").unwrap();
    let mut cmd = Command::new(vigil_exe());
    cmd.arg("guardian").args(args).arg("--key").arg(key).arg("--passphrase-file").arg(&pass).arg("--json");
    if let Some(p) = policy {
        cmd.arg("--policy").arg(p);
    }
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn with_the_cosigner_gone_for_good_owner_and_guardians_recover_every_coin_after_t_recover() {
    use base64::Engine as _;
    let mut s = services("", false);
    let (_keys, guardian_keys, xpubs) = guardians_made_by_cli(2);
    let Funded { _home, dir, phrase, payer, .. } = funded_with(&s, 2, &xpubs);
    let policy = dir.join("policy.toml");
    let made = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(made["state"], "protected", "{made}");
    mine(&s.node.rpc, 1, &payer.address());

    // The co-signer is gone for good. The vault's unvault is sent; the towers cancel it.
    s.co.kill9();
    // Looking changes nothing; --unvault starts the clock.
    let look = json(&dir, &["recover"], &[REAL]);
    assert_eq!(
        (look["in_place"].as_array().unwrap().len(), look["unvaults_sent"].as_array().unwrap().len()),
        (1, 0),
        "{look}"
    );
    let first = json(&dir, &["recover", "--unvault"], &[REAL]);
    assert_eq!(first["unvaults_sent"].as_array().unwrap().len(), 1, "{first}");
    assert!(first["ready"].as_array().unwrap().is_empty(), "nothing is open before T_RECOVER: {first}");
    let survey = eventually("the towers cancel the unvault to the recovery output", || {
        mine(&s.node.rpc, 1, &payer.address());
        let v = json(&dir, &["recover"], &[REAL]);
        v["later"].as_array().unwrap().iter().any(|c| c["kind"] == "cancelled").then_some(v)
    });
    let later = survey["later"].as_array().unwrap();
    let kinds: Vec<&str> = later.iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"cancelled") && kinds.contains(&"intake"), "{survey}");
    let total: u64 = later.iter().map(|c| c["amount_sat"].as_u64().unwrap()).sum();
    let last_opens = later.iter().map(|c| c["opens_at"].as_u64().unwrap()).max().unwrap() as u32;

    // One block before the last leaf opens, that coin is not ready; at the block, all are.
    let tip = s.node.rpc.tip().unwrap().height;
    mine(&s.node.rpc, last_opens - 2 - tip, &payer.address());
    let early = json(&dir, &["recover"], &[REAL]);
    assert!(!early["later"].as_array().unwrap().is_empty(), "{early}");
    mine(&s.node.rpc, 1, &payer.address());
    let to = Wallet::new().address();
    let psbt = dir.join("recovery.psbt");
    let prepared =
        json(&dir, &["recover", "--to", &to.to_string(), "--psbt", psbt.to_str().unwrap()], &[REAL, &phrase]);
    assert!(prepared["later"].as_array().unwrap().is_empty(), "{prepared}");
    let amount = prepared["amount_sat"].as_u64().unwrap();
    assert!(amount < total && total - amount < 10_000, "only the fee is taken: {total} -> {amount}");

    // A guardian refuses what is not a recovery: the same PSBT with no timelock.
    let text = std::fs::read_to_string(&psbt).unwrap();
    let mut edited = vigil_policy::bitcoin::psbt::Psbt::deserialize(
        &base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap(),
    )
    .unwrap();
    let prepared_sequence = edited.unsigned_tx.input[0].sequence;
    edited.unsigned_tx.input[0].sequence = vigil_policy::bitcoin::Sequence::ZERO;
    let forged = dir.join("forged.psbt");
    std::fs::write(&forged, base64::engine::general_purpose::STANDARD.encode(edited.serialize())).unwrap();
    let (ok, _, err) =
        guardian(&guardian_keys[0], &["sign-recovery", forged.to_str().unwrap(), "--yes"], Some(&policy));
    assert!(!ok && err.contains("signs only the policy's recovery leaves"), "{err}");

    // A PSBT asking for signatures over one input and one output only (reusable elsewhere)
    // still gets signatures over the whole transaction.
    let mut asking = edited.clone();
    asking.unsigned_tx.input[0].sequence = prepared_sequence;
    for input in &mut asking.inputs {
        input.sighash_type =
            Some(vigil_policy::bitcoin::sighash::TapSighashType::SinglePlusAnyoneCanPay.into());
    }
    std::fs::write(&psbt, base64::engine::general_purpose::STANDARD.encode(asking.serialize())).unwrap();
    // One guardian is not enough; the owner's finish says so and sends nothing.
    let (ok, _, err) =
        guardian(&guardian_keys[0], &["sign-recovery", psbt.to_str().unwrap(), "--yes"], Some(&policy));
    assert!(ok, "{err}");
    let signed = vigil_policy::bitcoin::psbt::Psbt::deserialize(
        &base64::engine::general_purpose::STANDARD
            .decode(std::fs::read_to_string(&psbt).unwrap().trim())
            .unwrap(),
    )
    .unwrap();
    let sighash_types: Vec<_> =
        signed.inputs.iter().flat_map(|i| i.tap_script_sigs.values().map(|s| s.sighash_type)).collect();
    assert!(sighash_types.len() >= 2 * signed.inputs.len(), "the owner's and this guardian's");
    assert!(sighash_types.iter().all(|t| *t == vigil_policy::bitcoin::sighash::TapSighashType::Default));
    let (ok, _, err) = vigil(&dir, &["recover", "--finish", psbt.to_str().unwrap()], &[REAL]);
    assert!(!ok && err.contains("not enough signatures"), "{err}");
    // A PSBT sending elsewhere is not the one prepared.
    let (ok, _, err) = vigil(&dir, &["recover", "--finish", forged.to_str().unwrap()], &[REAL]);
    assert!(!ok && err.contains("not the recovery this wallet prepared"), "{err}");

    let (ok, _, err) =
        guardian(&guardian_keys[1], &["sign-recovery", psbt.to_str().unwrap(), "--yes"], Some(&policy));
    assert!(ok, "{err}");
    recovery_arrives(&s, &dir, &payer, psbt.to_str().unwrap(), amount, &to);
    let after = json(&dir, &["recover"], &[REAL]);
    assert!(
        after["ready"].as_array().unwrap().is_empty() && after["later"].as_array().unwrap().is_empty(),
        "{after}"
    );
    eprintln!("recovered {amount} sat of {total} through the recovery leaves at block {last_opens}");
}

#[test]
fn small_spends_leave_the_allowance_at_once_under_either_code_and_large_ones_take_a_vault() {
    let s = services("", false);
    let Funded { _home, dir, phrase, payer, .. } = funded(&s, 2);
    let made = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(made["state"], "protected", "{made}");
    let got = json(&dir, &["receive", "--allowance"], &[REAL]);
    let limit = got["limit_sat"].as_u64().unwrap();
    let address: Address = got["address"].as_str().unwrap().parse::<Address<_>>().unwrap().assume_checked();
    payer.pay(&s.node.rpc, 3, address.script_pubkey(), Amount::from_sat(300_000));
    mine(&s.node.rpc, 1, &payer.address());
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(
        (status["allowance_sat"].as_u64(), status["allowance_limit_sat"].as_u64()),
        (Some(300_000), Some(limit))
    );

    // A small spend: from the allowance, at once, no phrase asked; under the duress code too
    // (the allowance is what an attacker can take).
    let arrived = |txid: &str, to: &Address| {
        let txid: vigil_policy::bitcoin::Txid = txid.parse().unwrap();
        let tx = s.node.rpc.transaction(&txid).unwrap().expect("broadcast");
        tx.output.iter().find(|o| o.script_pubkey == to.script_pubkey()).map(|o| o.value.to_sat())
    };
    let mut left = 300_000;
    for (code, sats) in [(REAL, 100_000u64), (DURESS, 50_000)] {
        let to = Wallet::new().address();
        let amount = format!("{}", Amount::from_sat(sats).to_btc());
        let sent = json(&dir, &["spend", &to.to_string(), &amount], &[code]);
        assert_eq!(sent[0]["progress"]["stage"], "sent from the allowance", "{sent}");
        assert_eq!(arrived(sent[0]["progress"]["txid"].as_str().unwrap(), &to), Some(sats));
        mine(&s.node.rpc, 1, &payer.address());
        let status = json(&dir, &["status"], &[code]);
        let now = status["allowance_sat"].as_u64().unwrap();
        assert!(now < left - sats && now > left - sats - 2_000, "only the fee besides: {left} -> {now}");
        left = now;
    }

    // More than the allowance holds: a vault spend (which asks for the phrase).
    let to = Wallet::new().address();
    let big = json(&dir, &["spend", &to.to_string(), "0.01"], &[REAL, &phrase]);
    assert!(big[0]["id"].as_u64().is_some(), "a vault spend request: {big}");
    assert_eq!(
        json(&dir, &["status"], &[REAL])["allowance_sat"].as_u64(),
        Some(left),
        "the allowance untouched"
    );

    // Above its limit the allowance hands out no address.
    let address = address_from(&dir, &["receive", "--allowance"]);
    payer.pay(&s.node.rpc, 4, address.script_pubkey(), Amount::from_sat(limit));
    mine(&s.node.rpc, 1, &payer.address());
    let (ok, _, err) = vigil(&dir, &["receive", "--allowance"], &[REAL]);
    assert!(!ok && err.contains("keep the rest in vaults"), "{err}");
}

#[test]
fn the_wallet_vaults_and_spends_the_same_on_a_real_bitcoind() {
    let Some(core) = vigil_testenv::process::bitcoind() else { return };
    let s = services_on(core, "", false);
    let Funded { _home, dir, phrase, payer, .. } = funded(&s, 1);
    let made = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(made["state"], "protected", "{made}");
    mine(&s.node.rpc, 1, &payer.address());
    let address = address_from(&dir, &["receive", "--allowance"]);
    payer.pay(&s.node.rpc, 2, address.script_pubkey(), Amount::from_sat(300_000));
    mine(&s.node.rpc, 1, &payer.address());
    let to = Wallet::new().address();
    let sent = json(&dir, &["spend", &to.to_string(), "0.001"], &[REAL]);
    assert_eq!(sent[0]["progress"]["stage"], "sent from the allowance", "{sent}");
    mine(&s.node.rpc, 1, &payer.address());
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["vaults"][0]["state"], "protected", "{status}");
    let left = status["allowance_sat"].as_u64().unwrap();
    assert!(left < 200_000 && left > 198_000, "{status}");
}

#[test]
fn the_wallet_vaults_and_spends_the_same_over_electrum() {
    let Some((core, electrs)) = vigil_testenv::process::bitcoind_with_electrs() else { return };
    let mut s = services_on(core, "", false);
    s.electrs = Some(electrs);
    let Funded { _home, dir, phrase, payer, .. } = funded(&s, 1);
    let config = std::fs::read_to_string(dir.join("wallet.toml")).unwrap();
    assert!(config.contains("kind = \"electrum\""), "{config}");
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["intake_sat"], 6_000_000, "the intake coin, seen over Electrum: {status}");
    let made = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(made["state"], "protected", "{made}");
    s.mine(1, &payer.address());
    let address = address_from(&dir, &["receive", "--allowance"]);
    payer.pay(&s.node.rpc, 2, address.script_pubkey(), Amount::from_sat(300_000));
    s.mine(1, &payer.address());
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["allowance_sat"], 300_000, "{status}");
    let to = Wallet::new().address();
    let sent = json(&dir, &["spend", &to.to_string(), "0.001"], &[REAL]);
    assert_eq!(sent[0]["progress"]["stage"], "sent from the allowance", "{sent}");
    s.mine(1, &payer.address());
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["vaults"][0]["state"], "protected", "{status}");
    assert_eq!(status["vaults"][0]["confirmed_height"], s.node.rpc.tip().unwrap().height - 2, "{status}");
    let left = status["allowance_sat"].as_u64().unwrap();
    assert!(left < 200_000 && left > 198_000, "{status}");
    // A vault spend over Electrum, to the end: the unvault seen confirmed, the payment sent
    // at DELAY and seen confirmed.
    let to = to.to_string();
    let started = json(&dir, &["spend", &to, "0.01"], &[REAL, &phrase]);
    assert_eq!(started[0]["progress"]["stage"], "unlocking", "{started}");
    s.mine(1, &payer.address());
    let waiting = json(&dir, &["spend", "--resume"], &[REAL]);
    let from = waiting[0]["progress"]["spendable_from_height"].as_u64().unwrap() as u32;
    s.mine(from - s.node.rpc.tip().unwrap().height, &payer.address());
    let sent = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(sent[0]["progress"]["stage"], "sent", "{sent}");
    s.mine(1, &payer.address());
    let done = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(done[0]["progress"]["stage"], "done", "{done}");
}

/// The allowance wallet looks for the addresses it handed out and 25 past them, moved on by
/// each coin it finds; a restored one knows none handed out.
const ALLOWANCE_LOOKAHEAD: usize = 25;

#[test]
fn a_restore_over_electrum_finds_allowance_payments_past_its_window_and_out_of_order() {
    let Some((core, electrs)) = vigil_testenv::process::bitcoind_with_electrs() else { return };
    let mut s = services_on(core, "", false);
    s.electrs = Some(electrs);
    let Funded { _home, dir, phrase, payer, .. } = funded(&s, 1);
    let handed: Vec<Address> =
        (0..ALLOWANCE_LOOKAHEAD + 21).map(|_| address_from(&dir, &["receive", "--allowance"])).collect();
    // One block each: the first past a restored wallet's window; then one that moves the
    // window over it; then one past even the moved window, found only once the first is.
    let paid = [ALLOWANCE_LOOKAHEAD + 3, 3, ALLOWANCE_LOOKAHEAD + 20];
    for (h, &index) in paid.iter().enumerate() {
        payer.pay(&s.node.rpc, h as u32 + 2, handed[index].script_pubkey(), Amount::from_sat(10_000));
        s.mine(1, &payer.address());
    }
    let before = json(&dir, &["status"], &[REAL]);
    assert_eq!(before["allowance_sat"], 30_000, "{before}");
    let text = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    let id = id_on_paper(&text);
    std::fs::remove_dir_all(&dir).unwrap();
    let restore = restore_from_cosigner(&s);
    let restore: Vec<&str> = restore.iter().map(String::as_str).collect();
    let (ok, out, err) = vigil(&dir, &restore, &[&id, &phrase, "8642", "8642", "9753", "9753"]);
    assert!(ok, "{out}{err}");
    let after = json(&dir, &["status"], &["8642"]);
    for field in ["intake_sat", "allowance_sat"] {
        assert_eq!(after[field], before[field], "{field}: {after} vs {before}");
    }
    // The restored allowance hands out an address none of those paid.
    let next = json(&dir, &["receive", "--allowance"], &["8642"]);
    let next = next["address"].as_str().unwrap().parse::<Address<_>>().unwrap().assume_checked();
    assert!(!handed[..=ALLOWANCE_LOOKAHEAD + 20].contains(&next), "{next} was paid before");
}

#[test]
fn a_panic_sweeps_to_the_deep_vault_and_backup_and_every_guardian_bring_it_back_at_once() {
    use base64::Engine as _;
    let (url, alarms) = webhook();
    let s = services(&format!("[alarms]\nwebhooks = [{url:?}]\n"), false);
    let (_keys, guardian_keys, xpubs) = guardians_made_by_cli(2);
    let Funded { _home, dir, phrase, backup, payer, .. } = funded_with(&s, 1, &xpubs);
    let policy = dir.join("policy.toml");
    let made = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(made["state"], "protected", "{made}");
    mine(&s.node.rpc, 1, &payer.address());

    // The guardians' quorum signs a panic: the towers sweep the vault to the deep vault.
    let swept = panic_to_the_deep_vault(&s, &dir, &payer, &guardian_keys, &policy, 5_000_000);
    assert_eq!(swept["vaults"][0]["state"], "in the deep vault", "{swept}");

    // The fast path: the backup key, every guardian, then the co-signer; no LONG wait.
    let to = Wallet::new().address();
    let psbt = dir.join("deep.psbt");
    let p = psbt.to_str().unwrap();
    let (ok, _, err) =
        vigil(&dir, &["recover", "--deep-vault", "--to", &to.to_string(), "--psbt", p], &[REAL, &phrase]);
    assert!(
        !ok && err.contains("not the recovery phrase of this wallet"),
        "the everyday phrase is not the backup's: {err}"
    );
    let prepared =
        json(&dir, &["recover", "--deep-vault", "--to", &to.to_string(), "--psbt", p], &[REAL, &backup]);
    let amount = prepared["amount_sat"].as_u64().unwrap();
    assert!(amount < 5_000_000 && amount > 4_990_000, "{prepared}");
    let (ok, _, err) = guardian(&guardian_keys[0], &["sign-recovery", p, "--yes"], Some(&policy));
    assert!(ok, "{err}");
    let (ok, _, err) = vigil(&dir, &["recover", "--finish", p], &[REAL]);
    assert!(!ok && err.contains("every guardian"), "the co-signer wants every guardian: {err}");
    let (ok, _, err) = guardian(&guardian_keys[1], &["sign-recovery", p, "--yes"], Some(&policy));
    assert!(ok, "{err}");
    // The guardians signed the deep vault's leaves only, over the whole transaction.
    let signed = vigil_policy::bitcoin::psbt::Psbt::deserialize(
        &base64::engine::general_purpose::STANDARD
            .decode(std::fs::read_to_string(&psbt).unwrap().trim())
            .unwrap(),
    )
    .unwrap();
    assert!(signed.inputs.iter().all(|i| i
        .tap_script_sigs
        .values()
        .all(|sig| sig.sighash_type == vigil_policy::bitcoin::sighash::TapSighashType::Default)));
    recovery_arrives(&s, &dir, &payer, p, amount, &to);
    eventually("the guardians are told", || {
        alarms.lock().unwrap().iter().any(|a| a["kind"] == "deep-vault-returned").then_some(())
    });
    let after = json(&dir, &["status"], &[REAL]);
    assert_eq!(after["deep_vault_sat"], 0, "{after}");
    assert!(after["locked_down_until"].is_null(), "{after}");

    // A guardian's lockdown shows in the owner's status.
    let (ok, _, err) = guardian(&guardian_keys[0], &["lockdown", "--blocks", "20"], Some(&policy));
    assert!(ok, "{err}");
    let tip = u64::from(s.node.rpc.tip().unwrap().height);
    let locked = json(&dir, &["status"], &[REAL]);
    assert_eq!(locked["locked_down_by_others_until"].as_u64(), Some(tip + 20), "{locked}");
    let (_, text, _) = vigil(&dir, &["status"], &[REAL]);
    assert!(text.contains(&format!("Locked down until block {}", tip + 20)), "{text}");
}

#[test]
fn coins_swept_under_an_earlier_backup_key_come_back_with_that_keys_phrase() {
    let s = services("", false);
    let (keys, guardian_keys, xpubs) = guardians_made_by_cli(2);
    let Funded { _home, dir, phrase, backup, payer, .. } = funded_with(&s, 2, &xpubs);
    let policy = keys.path().join("policy.toml");
    std::fs::copy(dir.join("policy.toml"), &policy).unwrap();
    let old = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(old["state"], "protected", "{old}");
    mine(&s.node.rpc, 1, &payer.address());

    // The off-site backup is replaced (its paper lost, say): the guardians' quorum signs a
    // version 2 naming a new one. The vault made before keeps version 1's deep vault.
    let other = _home.path().join("other");
    let (ok, _, err) = init_with(&s, &other, &xpubs);
    assert!(ok, "{err}");
    let new_backup = words_between(&err, "STEP 2", "STEP 3");
    let backup_line = |text: &str| text.lines().find(|l| l.starts_with("backup = ")).unwrap().to_owned();
    let v1 = std::fs::read_to_string(&policy).unwrap();
    let replaced = backup_line(&std::fs::read_to_string(other.join("policy.toml")).unwrap());
    let v2 = v1.replacen("version = 1", "version = 2", 1).replacen(&backup_line(&v1), &replaced, 1);
    assert!(v2.contains(&replaced) && backup_line(&v1) != replaced, "{v2}");
    let effective = guardians_sign(keys.path(), &guardian_keys, &policy, &v2);
    let tip = s.node.rpc.tip().unwrap().height;
    mine(&s.node.rpc, effective.saturating_sub(tip), &payer.address());
    let new = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(new["state"], "protected", "{new}");
    mine(&s.node.rpc, 1, &payer.address());
    let swept = panic_to_the_deep_vault(&s, &dir, &payer, &guardian_keys, &policy, 10_000_000);
    let versions: Vec<u64> =
        swept["vaults"].as_array().unwrap().iter().map(|v| v["policy_version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [1, 2], "{swept}");

    // Each phrase brings back the coin its key holds, and names the other, left for its own
    // key, instead of making a transaction nobody can finish: the replaced phrase first (it is
    // still version 1's key), then today's.
    let to = Wallet::new().address();
    let psbt = dir.join("deep.psbt");
    let p = psbt.to_str().unwrap();
    let recover = ["recover", "--deep-vault", "--to", &to.to_string(), "--psbt", p, "--json"];
    let recover_with = |phrase: &str| {
        let (ok, out, err) = vigil(&dir, &recover, &[REAL, phrase]);
        assert!(ok, "{err}");
        let amount = serde_json::from_str::<Value>(&out).unwrap()["amount_sat"].as_u64().unwrap();
        assert!(amount < 5_000_000 && amount > 4_990_000, "one coin: {out}");
        for key in &guardian_keys {
            let (ok, _, err) = guardian(key, &["sign-recovery", p, "--yes"], Some(&policy));
            assert!(ok, "{err}");
        }
        recovery_arrives(&s, &dir, &payer, p, amount, &to);
        err
    };
    let err = recover_with(&backup);
    assert!(err.contains("Left out: coin") && err.contains("policy version 2"), "{err}");
    let err = recover_with(&new_backup);
    assert!(!err.contains("Left out"), "the other coin is back already: {err}");
    assert_eq!(json(&dir, &["status"], &[REAL])["deep_vault_sat"], 0);
}

#[test]
fn a_lost_device_is_rebuilt_from_the_phrase_and_a_guardians_copy_of_the_policy() {
    let (url, alarms) = webhook();
    let s = services(&format!("[alarms]\nwebhooks = [{url:?}]\n"), false);
    let (_keys, guardian_keys, xpubs) = guardians_made_by_cli(2);
    let Funded { _home, dir, phrase, payer, .. } = funded_with(&s, 2, &xpubs);
    let made = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(made["state"], "protected", "{made}");
    mine(&s.node.rpc, 1, &payer.address());
    let before = json(&dir, &["status"], &[REAL]);

    // The phone is lost; a guardian's copy of the policy is not.
    let copy = _home.path().join("policy-from-a-guardian.toml");
    std::fs::copy(dir.join("policy.toml"), &copy).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let chain = chain_args(&s);
    let restore = [
        &["init", "--restore", copy.to_str().unwrap()],
        &chain.iter().map(String::as_str).collect::<Vec<_>>()[..],
    ]
    .concat();
    let (new_real, new_duress) = ("8642", "9753");
    let wrong = vigil_client::owner::new_phrase().to_string();
    // The 16 characters written on paper at setup tell the true copy from a changed one.
    let text = std::fs::read_to_string(&copy).unwrap();
    let id = id_on_paper(&text);
    let changed = _home.path().join("changed-policy.toml");
    std::fs::write(&changed, text.replace("velocity_window_blocks", "velocity_window_blocks ")).unwrap();
    let mut with_changed = restore.to_vec();
    with_changed[2] = changed.to_str().unwrap();
    let (ok, _, err) = vigil(&dir, &with_changed, &[&id, &phrase]);
    assert!(!ok && err.contains("not the one you set up"), "{err}");
    assert!(!dir.exists(), "nothing was made");
    let (ok, out, err) =
        vigil(&dir, &restore, &[&id, &wrong, &phrase, new_real, new_real, new_duress, new_duress]);
    assert!(ok, "{out}{err}");
    assert!(err.contains("not the recovery phrase of this wallet"), "a wrong phrase is named: {err}");
    let after = json(&dir, &["status"], &[new_real]);
    for field in ["intake_sat", "vault_sat", "allowance_sat"] {
        assert_eq!(after[field], before[field], "{field}: {after} vs {before}");
    }
    assert_eq!(after["vaults"][0]["vault"], before["vaults"][0]["vault"]);
    assert_eq!(after["vaults"][0]["state"], "protected");
    eventually("the guardians are told of the restore", || {
        alarms.lock().unwrap().iter().any(|a| a["kind"] == "owner-restored").then_some(())
    });
    assert!(
        !alarms.lock().unwrap().iter().any(|a| a["kind"] == "duress"),
        "the new real code is the real one"
    );

    // Whoever restored holds codes of their own (a captor may): until the guardians' quorum
    // confirms the restore, a vault spend within the limits waits for them.
    let to = Wallet::new().address().to_string();
    let held = json(&dir, &["spend", &to, "0.01"], &[new_real, &phrase]);
    assert_eq!(held[0]["progress"]["stage"], "waiting for guardians", "{held}");
    let policy = dir.join("policy.toml");
    let pass = guardian_keys[0].with_extension("pass");
    let told = Command::new(vigil_exe())
        .args(["guardian", "pending", "--key"])
        .arg(&guardian_keys[0])
        .arg("--passphrase-file")
        .arg(&pass)
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    let told = String::from_utf8_lossy(&told.stdout).into_owned();
    assert!(told.contains("restored on a new device") && told.contains("confirm-restore"), "{told}");
    // A number other than the latest restore's (the owner's device was restored by someone
    // else since) confirms nothing.
    let typed = ["confirm-restore", "--yes", "--restore", "7"];
    let (ok, _, err) = guardian(&guardian_keys[0], &typed, Some(&policy));
    assert!(!ok && err.contains("showed restore number 7") && err.contains("someone restored"), "{err}");
    let confirm = |g: usize| guardian(&guardian_keys[g], &["confirm-restore", "--yes"], Some(&policy));
    let (ok, out, err) = confirm(0);
    assert!(ok, "{err}");
    let first: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((first["confirmations"].as_u64(), first["needed"].as_u64()), (Some(1), Some(2)), "{first}");
    assert_eq!(first["held"], true, "one guardian is not the quorum: {first}");
    let (ok, _, err) = confirm(0);
    assert!(!ok && err.contains("confirmed this restore already"), "{err}");
    let (ok, out, err) = confirm(1);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["held"], false, "the quorum: {out}");
    eventually("the guardians are told the restore is confirmed", || {
        alarms.lock().unwrap().iter().any(|a| a["kind"] == "restore-confirmed").then_some(())
    });
    let (ok, _, err) = confirm(1);
    assert!(!ok && err.contains("no restore"), "{err}");
    // Confirmed, the restored wallet's next vault spend is approved at once; the new duress
    // code is a duress code.
    let made = json(&dir, &["vault", "0.05"], &[new_real, &phrase]);
    assert_eq!(made["state"], "protected", "{made}");
    mine(&s.node.rpc, 1, &payer.address());
    let started = json(&dir, &["spend", &to, "0.01"], &[new_real, &phrase]);
    assert!(started.as_array().unwrap().iter().any(|s| s["progress"]["stage"] == "unlocking"), "{started}");
    json(&dir, &["status"], &[new_duress]);
    eventually("the new duress code alarms", || {
        alarms.lock().unwrap().iter().any(|a| a["kind"] == "duress").then_some(())
    });
    // Restoring over a wallet changes nothing.
    let (ok, _, err) = vigil(&dir, &restore, &[&phrase]);
    assert!(!ok && err.contains("already a wallet"), "{err}");
}

#[test]
fn a_lost_device_is_rebuilt_from_the_phrase_and_the_policy_the_cosigner_keeps() {
    let s = services("", false);
    let Funded { _home, dir, phrase, payer, .. } = funded(&s, 2);
    let made = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(made["state"], "protected", "{made}");
    mine(&s.node.rpc, 1, &payer.address());
    // Addresses handed out since, paid out of their order: first one past the window a
    // restored wallet starts with (the first address and twenty beyond), then an earlier one
    // that moves the window over it.
    let intake = |status: &Value| status["intake_sat"].as_u64().unwrap();
    let unpaid = intake(&json(&dir, &["status"], &[REAL]));
    let handed: Vec<Address> = (0..22).map(|_| address_from(&dir, &["receive"])).collect();
    for (h, address) in [(3, &handed[21]), (4, &handed[8])] {
        payer.pay(&s.node.rpc, h, address.script_pubkey(), Amount::from_sat(1_000_000));
        mine(&s.node.rpc, 1, &payer.address());
    }
    let before = json(&dir, &["status"], &[REAL]);
    assert_eq!(intake(&before), unpaid + 2_000_000, "{before}");
    let text = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    let id = id_on_paper(&text);
    let once_xpubs = |dir: &Path| {
        let state: Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
        state["vaults"][0]["once_xpubs"].clone()
    };
    let kept = once_xpubs(&dir);
    assert_eq!(kept.as_array().map(Vec::len), Some(2), "the vault's one-time extended keys: {kept}");
    // Nothing but the phrase and the 16 characters on paper survive.
    std::fs::remove_dir_all(&dir).unwrap();
    let restore = restore_from_cosigner(&s);
    let restore: Vec<&str> = restore.iter().map(String::as_str).collect();
    let no_cosigner = [&restore[..2], &restore[4..]].concat();
    let (ok, _, err) = vigil(&dir, &no_cosigner, &["0123456789abcdef"]);
    assert!(!ok && err.contains("give --cosigner URL"), "{err}");
    let (ok, _, err) = vigil(&dir, &restore, &["0123-4567"]);
    assert!(!ok && err.contains("16 characters"), "{err}");
    // Another phrase, or another id: the co-signer has no such client (and says no more).
    let stranger = vigil_client::owner::new_phrase().to_string();
    for (typed, words) in [(id.as_str(), stranger.as_str()), ("0123456789abcdef", phrase.as_str())] {
        let (ok, _, err) = vigil(&dir, &restore, &[typed, words]);
        assert!(!ok && err.contains("no client whose id begins"), "{err}");
        assert!(err.contains("nothing was changed") && !dir.exists(), "{err}");
    }
    let written = format!("{}-{}-{}-{}", &id[..4], &id[4..8], &id[8..12], &id[12..]);
    let (ok, out, err) =
        vigil(&dir, &restore, &[&written.to_uppercase(), &phrase, "8642", "8642", "9753", "9753"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("this is restore number 1"), "the number the guardians confirm: {out}");
    assert_eq!(
        std::fs::read_to_string(dir.join("policy.toml")).unwrap(),
        text,
        "the pinned policy, unchanged"
    );
    let after = json(&dir, &["status"], &["8642"]);
    for field in ["intake_sat", "vault_sat"] {
        assert_eq!(after[field], before[field], "{field}: {after} vs {before}");
    }
    assert_eq!(after["vaults"][0]["state"], "protected", "{after}");
    // The co-signer kept the one-time keys' extended keys: a hardware signer can register the
    // restored vault again.
    assert_eq!(once_xpubs(&dir), kept);
}

#[test]
fn a_vault_and_its_spend_signed_elsewhere_come_back_checked_and_go_on() {
    use base64::Engine as _;
    let s = services("", false);
    let Funded { _home, dir, phrase, payer, .. } = funded(&s, 1);
    let read = |file: &Path| {
        let text = std::fs::read_to_string(file).unwrap();
        vigil_policy::bitcoin::psbt::Psbt::deserialize(
            &base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap(),
        )
        .unwrap()
    };
    let write = |p: &vigil_policy::bitcoin::psbt::Psbt, name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode(p.serialize())).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let policy =
        vigil_policy::Policy::from_toml(&std::fs::read_to_string(dir.join("policy.toml")).unwrap()).unwrap();
    let sign_with = |file: &Path, words: &str| {
        let mut p = read(file);
        let key = vigil_client::owner::VaultKey::from_phrase(
            &vigil_client::owner::parse_phrase(words).unwrap(),
            policy.network,
            &policy.owner.keys[0].xpub,
        );
        match key {
            Ok(k) => k.sign_psbt(&mut p),
            // Another wallet's phrase: its own key signs (what a wrong device would do).
            Err(_) => {
                let other = vigil_client::owner::parse_phrase(words).unwrap();
                let xpub = vigil_client::owner::public_keys(&other, String::new(), policy.network).owner_key;
                let xpub: vigil_policy::bitcoin::bip32::Xpub =
                    xpub.split(']').nth(1).unwrap().parse().unwrap();
                vigil_client::owner::VaultKey::from_phrase(&other, policy.network, &xpub)
                    .unwrap()
                    .sign_psbt(&mut p)
            }
        }
        p
    };
    let stranger = vigil_client::owner::new_phrase().to_string();

    // The vault's funding, signed elsewhere: no phrase asked here.
    let funding = dir.join("vault.psbt");
    let waiting = json(&dir, &["vault", "0.05", "--sign-elsewhere", funding.to_str().unwrap()], &[REAL]);
    assert_eq!(waiting["state"], "waiting for the owner's signature", "{waiting}");
    for (psbt, name) in [(read(&funding), "unsigned"), (sign_with(&funding, &stranger), "stranger")] {
        let (ok, _, err) = vigil(&dir, &["vault", "--signed", &write(&psbt, name)], &[REAL]);
        assert!(
            !ok && err.contains("0 valid signature(s)") && err.contains("nothing was done"),
            "{name}: {err}"
        );
    }
    let mut other = sign_with(&funding, &phrase);
    other.unsigned_tx.lock_time = vigil_policy::bitcoin::absolute::LockTime::from_height(1).unwrap();
    let (ok, _, err) = vigil(&dir, &["vault", "--signed", &write(&other, "other")], &[REAL]);
    assert!(!ok && err.contains("not the funding waiting for a signature"), "{err}");
    let made = json(&dir, &["vault", "--signed", &write(&sign_with(&funding, &phrase), "signed")], &[REAL]);
    assert_eq!(made["state"], "protected", "{made}");
    let (ok, _, err) =
        vigil(&dir, &["vault", "--signed", &write(&sign_with(&funding, &phrase), "again")], &[REAL]);
    assert!(!ok && err.contains("no vault is waiting for a signature"), "{err}");
    mine(&s.node.rpc, 1, &payer.address());
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["vaults"][0]["state"], "protected", "{status}");

    let file = dir.join("spend.psbt");
    let f = file.to_str().unwrap();
    let to = Wallet::new().address().to_string();
    // No phrase asked: the PSBT goes to the signer.
    let out = json(&dir, &["spend", &to, "0.01", "--sign-elsewhere", f], &[REAL]);
    assert_eq!(out[0]["progress"]["stage"], "waiting for the owner's signature", "{out}");
    let resumed = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(resumed[0]["progress"]["stage"], "waiting for the owner's signature", "{resumed}");
    let read = || read(&file);
    let sign_with = |words: &str| sign_with(&file, words);
    // Unsigned, or signed by another wallet's key: refused, nothing sent.
    let (ok, _, err) = vigil(&dir, &["spend", "--signed", &write(&read(), "unsigned.psbt")], &[REAL]);
    assert!(!ok && err.contains("0 valid signature(s)"), "{err}");
    let (ok, _, err) =
        vigil(&dir, &["spend", "--signed", &write(&sign_with(&stranger), "wrong.psbt")], &[REAL]);
    assert!(!ok && err.contains("0 valid signature(s)"), "{err}");
    // Another transaction: not the spend waiting.
    let mut other = sign_with(&phrase);
    other.unsigned_tx.output[0].value -= vigil_policy::bitcoin::Amount::from_sat(1);
    let (ok, _, err) = vigil(&dir, &["spend", "--signed", &write(&other, "other.psbt")], &[REAL]);
    assert!(!ok && err.contains("no spend waiting for a signature"), "{err}");
    // Signed by the owner's key: it goes on as any vault spend.
    let went = json(&dir, &["spend", "--signed", &write(&sign_with(&phrase), "signed.psbt")], &[REAL]);
    assert_eq!(went[0]["progress"]["stage"], "unlocking", "{went}");
}

/// Every guardian (keys in `guardian_keys`, their copy of the policy put in `keys`) signs
/// version 2 of the wallet's policy: a longer DELAY and T_RECOVER, which change the scripts of
/// new vaults and intake addresses. Returns version 1's text and the height it applies at.
fn guardians_sign_version_2(dir: &Path, keys: &Path, guardian_keys: &[std::path::PathBuf]) -> (String, u32) {
    let policy = keys.join("policy.toml");
    std::fs::copy(dir.join("policy.toml"), &policy).unwrap();
    let v1 = std::fs::read_to_string(&policy).unwrap();
    let v2 = v1
        .replacen("version = 1", "version = 2", 1)
        .replacen("unvault = 10", "unvault = 13", 1)
        .replacen("recovery = 40", "recovery = 44", 1);
    assert!(v2.contains("unvault = 13") && v2.contains("recovery = 44"), "{v2}");
    (v1, guardians_sign(keys, guardian_keys, &policy, &v2))
}

/// Every guardian of `guardian_keys` signs the proposal `text` (written beside `policy`, the
/// guardians' copy): the height it applies from.
fn guardians_sign(keys: &Path, guardian_keys: &[std::path::PathBuf], policy: &Path, text: &str) -> u32 {
    let proposal = keys.join("v2.toml");
    std::fs::write(&proposal, text).unwrap();
    let mut last = Value::Null;
    for key in guardian_keys {
        let (ok, out, err) = guardian(key, &["policy", proposal.to_str().unwrap(), "--yes"], Some(policy));
        assert!(ok, "{err}");
        last = serde_json::from_str(&out).unwrap();
    }
    // The guardian whose signature made the quorum handed the change to every tower itself too.
    told_every_tower_directly(&last);
    last["effective_height"].as_u64().unwrap() as u32
}

/// Every tower took what a guardian's command handed it directly.
fn told_every_tower_directly(answer: &Value) {
    let towers = answer["towers_told_directly"].as_array().unwrap();
    assert!(!towers.is_empty() && towers.iter().all(|t| t["error"].is_null()), "{answer}");
}

#[test]
fn after_the_guardians_add_a_tower_the_owner_enrolls_it_and_it_watches_every_vault() {
    // The family names its guardians' webhook at init (the co-signer lets clients name
    // plain-HTTP ones here): the guardians hear of the change there.
    let (hook, alarms) = webhook();
    let s = services("client_webhooks = \"any\"", false);
    let (keys, guardian_keys, xpubs) = guardians_made_by_cli(2);
    let Funded { _home, dir, phrase, payer, .. } =
        funded_with_extra(&s, 2, &xpubs, &["--alarm-webhook", &hook]);
    let vault = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(vault["state"], "protected", "{vault}");
    s.mine(1, &payer.address());

    // The guardians' quorum adds a third tower; it waits the governance delay.
    let added = TowerProcess::configured(&s.node, &[], 7, TowerOptions::default());
    let policy = keys.path().join("policy.toml");
    std::fs::copy(dir.join("policy.toml"), &policy).unwrap();
    let v2 = std::fs::read_to_string(&policy).unwrap().replacen("version = 1", "version = 2", 1)
        + &format!(
            "\n[[towers]]\nname = \"tower-new\"\nurl = \"{}\"\nkey = \"{}\"\n",
            added.api.url, added.public_key
        );
    let effective = guardians_sign(keys.path(), &guardian_keys, &policy, &v2);
    eventually("the guardians' webhook hears of the change", || {
        alarms.lock().unwrap().iter().find(|a| a["kind"] == "policy-proposed").cloned()
    });
    let token = added.token();
    let enroll = ["enroll-tower", "--tower", "tower-new", "--token", token.as_str()];
    let (ok, _, early) = vigil(&dir, &enroll, &[REAL]);
    assert!(!ok && early.contains("joins with the change that applies at block"), "{early}");
    let tip = s.node.rpc.tip().unwrap().height;
    s.mine(effective - tip, &payer.address());

    // The owner hands the new tower's token over: it takes the policy and the vault.
    let enrolled = json(&dir, &enroll, &[REAL]);
    assert_eq!(
        (enrolled["enrolled"].as_bool(), enrolled["vaults"].as_u64()),
        (Some(true), Some(1)),
        "{enrolled}"
    );
    assert_eq!(added.metric("vigil_tower_vaults_watched"), Some(1));
    // The same command again (its answer lost) is the same enrollment: nothing doubles.
    let again = json(&dir, &enroll, &[REAL]);
    assert_eq!(
        (again["enrolled"].as_bool(), again["complete"].as_bool()),
        (Some(true), Some(true)),
        "{again}"
    );
    assert_eq!(added.metric("vigil_tower_vaults_watched"), Some(1));
    let next = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(next["state"], "protected", "{next}");
    assert_eq!(added.metric("vigil_tower_vaults_watched"), Some(2));
}

#[test]
fn after_the_guardians_change_the_policy_the_owner_vaults_and_spends_under_each_version() {
    use base64::Engine as _;
    let mut s = services("", false);
    let (keys, guardian_keys, xpubs) = guardians_made_by_cli(2);
    let Funded { _home, dir, phrase, payer, .. } = funded_with(&s, 3, &xpubs);
    let old = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(old["state"], "protected", "{old}");
    s.mine(1, &payer.address());
    let intake_before = json(&dir, &["status"], &[REAL])["intake_sat"].as_u64().unwrap();

    // The guardians' quorum signs version 2: a longer DELAY and T_RECOVER, which change the
    // scripts of new vaults and intake addresses, so it waits the governance delay.
    let (v1, effective) = guardians_sign_version_2(&dir, keys.path(), &guardian_keys);
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["policy_version"], 1, "{status}");
    assert_eq!(status["policy_waiting"]["version"], 2, "{status}");
    let tip = s.node.rpc.tip().unwrap().height;
    s.mine(effective - tip, &payer.address());

    // The owner's wallet follows it: today's vaults and addresses are version 2's; coins paid
    // to version 1's addresses (all there is yet) fund a version 2 vault, each through its own
    // version's leaf, checked by the co-signer.
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!((status["policy_version"].as_u64(), status["policy_waiting"].is_null()), (Some(2), true));
    assert_eq!(status["intake_sat"].as_u64(), Some(intake_before), "{status}");
    assert_eq!(
        (status["vaults"][0]["policy_version"].as_u64(), status["vaults"][0]["delay"].as_u64()),
        (Some(1), Some(10))
    );
    let from_old = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(from_old["state"], "protected", "{from_old}");
    let received = json(&dir, &["receive"], &[REAL]);
    let address: Address =
        received["address"].as_str().unwrap().parse::<Address<_>>().unwrap().assume_checked();
    payer.pay(&s.node.rpc, 10, address.script_pubkey(), Amount::from_sat(6_000_000));
    s.mine(1, &payer.address());
    let status = json(&dir, &["status"], &[REAL]);
    let paid = status["intake_sat"].as_u64().unwrap() + 5_000_000 + 1_000 - intake_before;
    assert!(paid > 6_000_000 && paid < 6_001_000, "the payment to version 2's address is found: {status}");
    let new = json(&dir, &["vault", "0.05"], &[REAL, &phrase]);
    assert_eq!(new["state"], "protected", "{new}");
    s.mine(1, &payer.address());
    let status = json(&dir, &["status"], &[REAL]);
    for v in &status["vaults"].as_array().unwrap()[1..] {
        assert_eq!((v["policy_version"].as_u64(), v["delay"].as_u64()), (Some(2), Some(13)), "{status}");
        assert_eq!(v["state"], "protected", "{status}");
    }

    // A spend from each: the old vault keeps its DELAY, the new one has version 2's, and
    // neither is paid a block early.
    let to = Wallet::new().address().to_string();
    let first = json(&dir, &["spend", &to, "0.01"], &[REAL, &phrase]);
    let second = json(&dir, &["spend", &to, "0.01"], &[REAL, &phrase]);
    let ids = [first[0]["id"].as_u64().unwrap(), second[0]["id"].as_u64().unwrap()];
    s.mine(1, &payer.address());
    let progress = |answer: &Value, id: u64| {
        let found = answer.as_array().unwrap().iter().find(|sp| sp["id"].as_u64() == Some(id));
        found.unwrap_or_else(|| panic!("spend {id}: {answer}"))["progress"].clone()
    };
    let waiting = json(&dir, &["spend", "--resume"], &[REAL]);
    let from = ids.map(|id| progress(&waiting, id)["spendable_from_height"].as_u64().unwrap() as u32);
    assert_eq!(from[1] - from[0], 3, "DELAY 10 for version 1's vault, 13 for version 2's: {waiting}");
    let mut paid = Vec::new();
    for (id, at) in ids.into_iter().zip(from) {
        let tip = s.node.rpc.tip().unwrap().height;
        if at > tip + 1 {
            s.mine(at - tip - 1, &payer.address());
        }
        let early = json(&dir, &["spend", "--resume"], &[REAL]);
        assert_eq!(progress(&early, id)["stage"], "unlocking", "one block early: {early}");
        s.mine(1, &payer.address());
        let sent = progress(&json(&dir, &["spend", "--resume"], &[REAL]), id);
        assert_eq!(sent["stage"], "sent", "{sent}");
        paid.push(sent["txid"].as_str().unwrap().parse().unwrap());
    }
    s.mine(1, &payer.address());
    for txid in paid {
        assert!(
            matches!(s.node.rpc.transaction_info(&txid).unwrap(), Some((_, Some(_)))),
            "{txid} confirmed"
        );
    }

    // The device is lost: rebuilt from the phrase and the policy the co-signer keeps, it
    // finds each vault's version from the vault's own script and every version's coins.
    let before = json(&dir, &["status"], &[REAL]);
    let restored = dir.parent().unwrap().join("restored");
    let id = id_on_paper(&v1);
    let restore = restore_from_cosigner(&s);
    let restore: Vec<&str> = restore.iter().map(String::as_str).collect();
    let (ok, out, err) = vigil(&restored, &restore, &[&id, &phrase, "8642", "8642", "9753", "9753"]);
    assert!(ok, "{out}{err}");
    let after = json(&restored, &["status"], &["8642"]);
    let versions = |v: &Value| {
        v["vaults"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["policy_version"].clone(), v["delay"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(versions(&after), versions(&before), "{after}");
    assert_eq!(
        (after["intake_sat"].clone(), after["policy_version"].as_u64()),
        (before["intake_sat"].clone(), Some(2))
    );
    let dir = restored;
    let code = "8642";

    // The co-signer is gone for good: every intake coin moves through its own version's
    // recovery leaf (T_RECOVER 40 or 44), which the guardians sign from the record of the
    // change they kept.
    s.co.kill9();
    let survey = json(&dir, &["recover"], &[code]);
    let later = survey["later"].as_array().unwrap();
    let last_opens = later.iter().map(|c| c["opens_at"].as_u64().unwrap()).max().unwrap() as u32;
    let tip = s.node.rpc.tip().unwrap().height;
    s.mine(last_opens - 1 - tip, &payer.address());
    let to = Wallet::new().address();
    let psbt = dir.join("recovery.psbt");
    let prepared =
        json(&dir, &["recover", "--to", &to.to_string(), "--psbt", psbt.to_str().unwrap()], &[code, &phrase]);
    assert!(prepared["later"].as_array().unwrap().is_empty(), "{prepared}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = std::fs::read_to_string(&psbt).unwrap();
    let unsigned = vigil_policy::bitcoin::psbt::Psbt::deserialize(&b64.decode(text.trim()).unwrap()).unwrap();
    let waits: std::collections::BTreeSet<u32> =
        unsigned.unsigned_tx.input.iter().map(|i| i.sequence.to_consensus_u32()).collect();
    assert_eq!(
        waits.into_iter().collect::<Vec<_>>(),
        [40, 44],
        "each coin waits its own version's T_RECOVER"
    );
    for key in &guardian_keys {
        let (ok, _, err) = guardian(
            key,
            &["sign-recovery", psbt.to_str().unwrap(), "--yes"],
            Some(&keys.path().join("policy.toml")),
        );
        assert!(ok, "{err}");
    }
    let sent = json(&dir, &["recover", "--finish", psbt.to_str().unwrap()], &[code]);
    assert_eq!(sent["stage"], "sent", "{sent}");
    s.mine(1, &payer.address());
    let txid: vigil_policy::bitcoin::Txid = sent["txid"].as_str().unwrap().parse().unwrap();
    assert!(
        matches!(s.node.rpc.transaction_info(&txid).unwrap(), Some((_, Some(_)))),
        "the recovery confirmed"
    );

    // A record of changes that no longer checks (edited on disk) does not lock the owner out:
    // the wallet opens on its pinned policy and says so, but hands out no address of a
    // version the guardians may have replaced.
    let state_file = dir.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let text = state["policy_changes"]["changes"][0]["policy"]
        .as_str()
        .unwrap()
        .replace("unvault = 13", "unvault = 14");
    state["policy_changes"]["changes"][0]["policy"] = text.into();
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let (ok, out, err) = vigil(&dir, &["status"], &[code]);
    assert!(ok && err.contains("cannot be followed") && out.contains("not readable now"), "{out}{err}");
    let (ok, _, err) = vigil(&dir, &["receive"], &[code]);
    assert!(!ok && err.contains("waits until this wallet can follow"), "{err}");
}

/// The emulated Ledger (run under its harness, which sets `LEDGER_SPECULOS_APDU`); none
/// skips the test, unless `VIGIL_REQUIRE_LEDGER=1`.
fn emulated_ledger() -> Option<String> {
    match std::env::var("LEDGER_SPECULOS_APDU") {
        Ok(addr) => Some(addr),
        Err(_) if std::env::var("VIGIL_REQUIRE_LEDGER").as_deref() == Ok("1") => {
            panic!("VIGIL_REQUIRE_LEDGER=1 but no emulated Ledger (LEDGER_SPECULOS_APDU is not set)")
        }
        Err(_) => None,
    }
}

/// Whether the harness's own approver presses the emulator's buttons (else the test does).
fn auto_approved() -> bool {
    std::env::var("LEDGER_APPROVE").as_deref() != Ok("off")
}

/// The address `vigil ARGS` (a `receive`) hands out.
fn address_from(dir: &Path, args: &[&str]) -> Address {
    let answer = json(dir, args, &[REAL]);
    answer["address"].as_str().unwrap().parse::<Address<_>>().unwrap().assume_checked()
}

/// A wallet made by `vigil init --signer ledger` on the emulated Ledger at `ledger`, with the
/// services on `node` and `guardians`; the payer holds the first 120 blocks' coins.
struct OnDevice {
    s: Services,
    _home: tempfile::TempDir,
    dir: std::path::PathBuf,
    payer: Wallet,
    /// What `vigil init` printed: its output, and the prompts and phrases on stderr.
    init: (String, String),
}

fn on_device(node: Node, ledger: &str, guardians: &[String]) -> OnDevice {
    on_device_with(node, ledger, guardians, &[])
}

/// [`on_device`], with more arguments for `vigil init`.
fn on_device_with(node: Node, ledger: &str, guardians: &[String], extra: &[&str]) -> OnDevice {
    let s = services_on(node, "", false);
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("wallet");
    let payer = Wallet::new();
    mine(&s.node.rpc, 120, &payer.address());
    let mut args = vec!["--signer", "ledger", "--signer-emulator", ledger];
    args.extend(extra);
    let (ok, out, err) = init_with_extra(&s, &dir, guardians, &args);
    assert!(ok, "{err}");
    OnDevice { s, _home: home, dir, payer, init: (out, err) }
}

#[test]
fn with_a_ledger_the_owner_sets_up_registers_receives_on_the_device_and_vaults() {
    let Some(ledger) = emulated_ledger().filter(|_| auto_approved()) else {
        eprintln!("skipped: no emulated Ledger approving every prompt");
        return;
    };
    let (_keys, guardian_keys, guardians) = guardians_made_by_cli(2);
    // The vault key is the device's: the policy is format 2 and names its fingerprint.
    let OnDevice { s, _home, dir, payer, init: (out, err) } = on_device(vigil_node(), &ledger, &guardians);
    assert!(out.contains("vigil signer register"), "{out}");
    let phrase = phrase_shown(&err);
    let policy = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    let record: Value = serde_json::from_slice(&std::fs::read(dir.join("signer.json")).unwrap()).unwrap();
    let fingerprint = record["fingerprint"].as_str().unwrap();
    assert!(
        policy.contains("\nformat = 2\n") && policy.contains(&format!("[{fingerprint}/48h/1h/0h/2h]tpub")),
        "{policy}"
    );

    // Before registering, the device cannot show an address: said, and nothing handed out.
    let (ok, _, err) = vigil(&dir, &["receive", "--on-device"], &[REAL]);
    assert!(!ok && err.contains("run `vigil signer register`"), "{err}");
    // With VIGIL_LEDGER_SCREENSHOTS=DIR, what the device shows is saved for the docs.
    let shots = std::env::var("VIGIL_LEDGER_SCREENSHOTS").ok().zip(std::env::var("LEDGER_SPECULOS_API").ok());
    let screens = |phase: &str, titles: &'static [&'static str]| {
        shots.as_ref().map(|(d, api)| {
            vigil_testenv::ledger::Watcher::start(api, Some((&Path::new(d).join(phase), titles)))
        })
    };
    let review: &'static [&'static str] =
        &["Review transaction", "From", "Amount", "To (1/", "Fees", "Sign transaction"];
    let recording = screens(
        "register",
        &[
            "Review account",
            "Account name",
            "Wallet policy (1/",
            "Dummy key@0 (1/",
            "Our key@1 (1/",
            "Their key@2 (1/",
            "Register account",
        ],
    );
    let registered = json(&dir, &["signer", "register"], &[REAL]);
    drop(recording);
    assert_eq!(registered["registered"].as_array().unwrap().len(), 2, "{registered}");
    assert!(registered["registered"].as_array().unwrap().iter().all(|r| r["new"] == true), "{registered}");
    let again = json(&dir, &["signer", "register"], &[REAL]);
    assert!(again["registered"].as_array().unwrap().iter().all(|r| r["new"] == false), "{again}");
    let kept = std::fs::read(dir.join("signer.json")).unwrap();
    // The allowance is on the device too: its own single-key account.
    let record: Value = serde_json::from_slice(&kept).unwrap();
    assert!(
        record["allowance"].as_str().unwrap().starts_with(&format!("[{fingerprint}/86h/1h/0h]tpub")),
        "{record}"
    );

    // The address is shown on the device, which computed the same one: the first index, since
    // the refused attempt above handed none out.
    let recording = screens("receive", &["Verify bitcoin", "Address (1/", "Account name", "Confirm"]);
    let shown = vigil_testenv::ledger::Watcher::start(&std::env::var("LEDGER_SPECULOS_API").unwrap(), None);
    let (ok, out, err) = vigil(&dir, &["receive", "--on-device", "--json"], &[REAL]);
    drop(recording);
    assert!(shown.pages().iter().any(|p| p.starts_with("Verify bitcoin address")), "{:?}", shown.pages());
    assert!(ok, "{err}");
    assert!(err.contains("Check that your Ledger shows exactly"), "{err}");
    let received: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(received["index"], 0, "{received}");
    let address: Address =
        received["address"].as_str().unwrap().parse::<Address<_>>().unwrap().assume_checked();
    payer.pay(&s.node.rpc, 1, address.script_pubkey(), Amount::from_sat(30_000_000));
    mine(&s.node.rpc, 1, &payer.address());

    // A kept registration the device does not accept (here the record was altered) is said
    // and made again, the first time the device is asked for it: the intake's by a receive,
    // R's by `signer register`.
    let signer_file = dir.join("signer.json");
    let mut altered: Value = serde_json::from_slice(&kept).unwrap();
    for (_, pair) in altered["registrations"].as_object_mut().unwrap() {
        let hmac = pair[1].as_str().unwrap();
        pair[1] = format!("{}{}", if hmac.starts_with('0') { "1" } else { "0" }, &hmac[1..]).into();
    }
    std::fs::write(&signer_file, serde_json::to_vec(&altered).unwrap()).unwrap();
    let refused = "does not accept this computer's record of its registration";
    let (ok, _, err) = vigil(&dir, &["receive", "--on-device"], &[REAL]);
    assert!(ok && err.matches(refused).count() == 1 && err.contains("\"Vigil intake\""), "{err}");
    let (ok, _, err) = vigil(&dir, &["signer", "register", "--json"], &[REAL]);
    assert!(ok && err.matches(refused).count() == 1 && err.contains("\"Vigil recovery\""), "{err}");
    assert_eq!(std::fs::read(&signer_file).unwrap(), kept, "the same registrations, made again");

    // A vault: the funding is signed on the device (no phrase asked), each signature checked.
    // Its change goes to the intake's change branch: the device knows it as its own and shows
    // one amount only, the vault's.
    let recording = screens("vault", review);
    let shown = vigil_testenv::ledger::Watcher::start(&std::env::var("LEDGER_SPECULOS_API").unwrap(), None);
    let (ok, out, err) = vigil(&dir, &["vault", "0.05", "--json"], &[REAL]);
    drop(recording);
    assert!(ok, "{err}");
    assert!(err.contains("Sign on your Ledger") && err.contains("0.05 BTC to"), "{err}");
    assert!(err.contains("and no other payment") && err.contains("the device knows as its own"), "{err}");
    assert!(!err.contains("Recovery phrase"), "{err}");
    let amounts: std::collections::BTreeSet<String> =
        shown.pages().into_iter().filter(|p| p.starts_with("Amount")).collect();
    assert_eq!(amounts.len(), 1, "the vault's amount only: {:?}", shown.pages());
    let made: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made["state"], "protected", "{made}");
    mine(&s.node.rpc, 1, &payer.address());
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["vaults"][0]["state"], "protected", "{status}");
    assert_eq!(status["vault_sat"], 5_000_000, "{status}");

    // A spend from it: the device registers the vault's own account (its one-time keys as
    // extended keys), then signs; the co-signer approves, and after DELAY the payment is
    // co-signed and mined, accepted by the node's consensus and policy.
    let to = Wallet::new().address().to_string();
    let recording = screens("spend", review);
    let (ok, out, err) = vigil(&dir, &["spend", &to, "0.01", "--json"], &[REAL]);
    drop(recording);
    assert!(ok, "{err}");
    assert!(err.contains("registers the account \"Vigil vault 0\"") && err.contains("0.01 BTC to"), "{err}");
    assert!(!err.contains("Recovery phrase"), "{err}");
    let started: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(started[0]["progress"]["stage"], "unlocking", "{started}");
    mine(&s.node.rpc, 1, &payer.address());
    spend_to_the_end(&s, &dir, &payer);
    let record: Value = serde_json::from_slice(&std::fs::read(dir.join("signer.json")).unwrap()).unwrap();
    assert_eq!(
        record["registrations"].as_object().unwrap().len(),
        3,
        "intake, recovery and the vault's: {record}"
    );
    allowance_spend_on_the_device(&s, &dir, &payer, 2);

    // A recovery after T_RECOVER, without the co-signer: a second vault (funded by the first's
    // change, the only intake coin) has its unvault sent and the towers cancel it to R; R's
    // coin and the intake coins (the change's change) go through their recovery leaves,
    // signed on the device (once per account) and by the guardians.
    let intake = json(&dir, &["status"], &[REAL])["intake_sat"].as_u64().unwrap();
    assert!(intake > 24_000_000, "the change is found on the change branch: {intake}");
    // An earlier release saving the state again drops what it does not know, the coin's
    // branch among it: the scan reads it back from the coin's own script.
    let state_file = dir.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    state.as_object_mut().unwrap().remove("next_change");
    let coins = state["coins"].as_array_mut().unwrap();
    assert!(coins.iter().any(|c| c["change"] == true), "{coins:?}");
    coins.iter_mut().for_each(|c| drop(c.as_object_mut().unwrap().remove("change")));
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    json(&dir, &["vault", "0.05"], &[REAL]);
    mine(&s.node.rpc, 1, &payer.address());
    let first = json(&dir, &["recover", "--unvault"], &[REAL]);
    assert_eq!(first["unvaults_sent"].as_array().unwrap().len(), 1, "{first}");
    eventually("the towers cancel the unvault to the recovery output", || {
        mine(&s.node.rpc, 1, &payer.address());
        let v = json(&dir, &["recover"], &[REAL]);
        v["later"].as_array().unwrap().iter().any(|c| c["kind"] == "cancelled").then_some(v)
    });
    let ready = eventually("every recovery leaf opens", || {
        mine(&s.node.rpc, 5, &payer.address());
        let v = json(&dir, &["recover"], &[REAL]);
        v["later"].as_array().unwrap().is_empty().then_some(v)
    });
    let kinds: Vec<&str> =
        ready["ready"].as_array().unwrap().iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"cancelled") && kinds.contains(&"intake"), "{ready}");
    let to = Wallet::new().address();
    let psbt = dir.join("recovery.psbt");
    let (ok, out, err) = vigil(
        &dir,
        &["recover", "--to", &to.to_string(), "--psbt", psbt.to_str().unwrap(), "--json"],
        &[REAL],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("Sign on your Ledger (1 of 2") && err.contains("Sign on your Ledger (2 of 2"),
        "{err}"
    );
    let amount = serde_json::from_str::<Value>(&out).unwrap()["amount_sat"].as_u64().unwrap();
    let policy = dir.join("policy.toml");
    for key in &guardian_keys {
        let (ok, _, err) = guardian(key, &["sign-recovery", psbt.to_str().unwrap(), "--yes"], Some(&policy));
        assert!(ok, "{err}");
    }
    recovery_arrives(&s, &dir, &payer, psbt.to_str().unwrap(), amount, &to);

    // The computer is lost: the wallet is rebuilt from the phrase, the co-signer's copy of the
    // policy and the same device, which holds the vault key; its accounts are registered again.
    let text = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    let id = id_on_paper(&text);
    let vaults = json(&dir, &["status"], &[REAL])["vaults"].as_array().unwrap().len();
    std::fs::remove_dir_all(&dir).unwrap();
    let restore = restore_from_cosigner(&s);
    let mut restore: Vec<&str> = restore.iter().map(String::as_str).collect();
    restore.extend(["--signer", "ledger", "--signer-emulator", &ledger]);
    let (ok, out, err) = vigil(&dir, &restore, &[&id, &phrase, "8642", "8642", "9753", "9753"]);
    assert!(ok, "{out}{err}");
    assert_eq!(std::fs::read_to_string(dir.join("policy.toml")).unwrap(), text);
    assert_eq!(json(&dir, &["status"], &["8642"])["vaults"].as_array().unwrap().len(), vaults);
    let registered = json(&dir, &["signer", "register"], &["8642"]);
    assert!(registered["registered"].as_array().unwrap().iter().all(|r| r["new"] == true), "{registered}");
}

#[test]
fn with_a_ledger_the_backup_key_on_a_second_device_brings_the_deep_vault_back() {
    let Some(ledger) = emulated_ledger().filter(|_| auto_approved()) else {
        eprintln!("skipped: no emulated Ledger approving every prompt");
        return;
    };
    // The holder's second Ledger, set up with its own words (BIP-39's first test vector).
    let words =
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
    let backup = vigil_testenv::ledger::SecondDevice::start(words).expect("the harness names its emulator");
    let backup_at = backup.apdu.to_string();
    let (_keys, guardian_keys, guardians) = guardians_made_by_cli(2);
    let OnDevice { s, _home, dir, payer, init: (_, err) } = on_device_with(
        vigil_node(),
        &ledger,
        &guardians,
        &["--backup-signer", "ledger", "--backup-signer-emulator", &backup_at],
    );
    // No backup phrase is shown: the key is the second device's, recorded with the wallet.
    assert!(
        err.contains("Your BACKUP key is on your second Ledger") && !err.contains("BACKUP key's phrase"),
        "{err}"
    );
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("backup-signer.json")).unwrap()).unwrap();
    let everyday: Value = serde_json::from_slice(&std::fs::read(dir.join("signer.json")).unwrap()).unwrap();
    let fingerprint = record["fingerprint"].as_str().unwrap();
    assert_ne!(fingerprint, everyday["fingerprint"].as_str().unwrap());
    let policy = dir.join("policy.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains(&format!("\nbackup = \"[{fingerprint}/48h/1h/0h/2h]tpub")), "{text}");

    // The everyday device offered as the backup is refused, and nothing is made: whoever
    // holds the owner would hold both.
    let other = _home.path().join("other");
    let (ok, _, err) = init_with_extra(
        &s,
        &other,
        &guardians,
        &[
            "--signer",
            "ledger",
            "--signer-emulator",
            &ledger,
            "--backup-signer",
            "ledger",
            "--backup-signer-emulator",
            &ledger,
        ],
    );
    assert!(!ok && err.contains("holds your everyday keys") && err.contains("nothing was made"), "{err}");
    assert!(!other.join("policy.toml").exists());

    // A vault, swept to the deep vault by the guardians' panic.
    json(&dir, &["signer", "register"], &[REAL]);
    let address = address_from(&dir, &["receive", "--on-device"]);
    payer.pay(&s.node.rpc, 1, address.script_pubkey(), Amount::from_sat(30_000_000));
    mine(&s.node.rpc, 1, &payer.address());
    assert_eq!(json(&dir, &["vault", "0.05"], &[REAL])["state"], "protected");
    mine(&s.node.rpc, 1, &payer.address());
    panic_to_the_deep_vault(&s, &dir, &payer, &guardian_keys, &policy, 5_000_000);

    // The computer's record of the backup device is gone (as after a restore): the phrase is
    // asked, with the way to use the device instead; a device that does not hold the backup
    // key is refused.
    let to = Wallet::new().address().to_string();
    let psbt = dir.join("deep.psbt");
    let p = psbt.to_str().unwrap();
    let back = ["recover", "--deep-vault", "--to", &to, "--psbt", p, "--json"];
    let recorded = std::fs::read(dir.join("backup-signer.json")).unwrap();
    // A record of the other kind in its place is refused, not saved over the everyday one's.
    let mut swapped: Value = serde_json::from_slice(&recorded).unwrap();
    swapped["kind"] = "ledger".into();
    std::fs::write(dir.join("backup-signer.json"), serde_json::to_vec(&swapped).unwrap()).unwrap();
    let everyday_record = std::fs::read(dir.join("signer.json")).unwrap();
    let (ok, _, err) = vigil(&dir, &back, &[REAL]);
    assert!(!ok && err.contains("backup-signer.json is damaged"), "{err}");
    assert_eq!(std::fs::read(dir.join("signer.json")).unwrap(), everyday_record);
    std::fs::remove_file(dir.join("backup-signer.json")).unwrap();
    let (ok, _, err) = vigil(&dir, &back, &[REAL]);
    assert!(!ok && err.contains("run the same command with --backup-signer ledger"), "{err}");
    let with_device = |at: &str| {
        let mut args = back.to_vec();
        args.extend(["--backup-signer", "ledger", "--backup-signer-emulator", at]);
        vigil(&dir, &args, &[REAL])
    };
    let (ok, _, err) = with_device(&ledger);
    assert!(!ok && err.contains("does not hold this wallet's backup key"), "{err}");
    assert!(!dir.join("backup-signer.json").exists() && !psbt.exists());

    // Brought back: the backup's device, recorded again, registers the deep vault's account
    // and signs (no phrase asked), then every guardian and the co-signer.
    let (ok, out, err) = with_device(&backup_at);
    assert!(ok, "{err}");
    assert!(
        err.contains("Sign with your BACKUP Ledger")
            && err.contains("registers the account \"Vigil deep vault\""),
        "{err}"
    );
    assert!(!err.contains("phrase"), "{err}");
    let amount = serde_json::from_str::<Value>(&out).unwrap()["amount_sat"].as_u64().unwrap();
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("backup-signer.json")).unwrap()).unwrap();
    let before: Value = serde_json::from_slice(&recorded).unwrap();
    assert_eq!((&record["fingerprint"], &record["kind"]), (&before["fingerprint"], &before["kind"]));
    assert_eq!(record["registrations"].as_object().unwrap().len(), 1, "{record}");
    for k in &guardian_keys {
        let (ok, _, err) = guardian(k, &["sign-recovery", p, "--yes"], Some(&policy));
        assert!(ok, "{err}");
    }
    recovery_arrives(&s, &dir, &payer, p, amount, &to.parse::<Address<_>>().unwrap().assume_checked());
    drop(backup);
}

/// A payment from the allowance, which the device holds: its address, a payment to it (from
/// the payer's coinbase at `coin`), then a small spend signed on the device and mined.
fn allowance_spend_on_the_device(s: &Services, dir: &Path, payer: &Wallet, coin: u32) {
    let (ok, out, err) = vigil(dir, &["receive", "--allowance", "--on-device", "--json"], &[REAL]);
    assert!(ok && err.contains("Check that your Ledger shows exactly"), "{err}");
    let address: Address = serde_json::from_str::<Value>(&out).unwrap()["address"]
        .as_str()
        .unwrap()
        .parse::<Address<_>>()
        .unwrap()
        .assume_checked();
    payer.pay(&s.node.rpc, coin, address.script_pubkey(), Amount::from_sat(300_000));
    s.mine(1, &payer.address());
    let to = Wallet::new().address();
    let (ok, out, err) = vigil(dir, &["spend", &to.to_string(), "0.001", "--json"], &[REAL]);
    assert!(ok, "{err}");
    assert!(err.contains("Sign on your Ledger") && err.contains("0.001 BTC to"), "{err}");
    let sent: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sent[0]["progress"]["stage"], "sent from the allowance", "{sent}");
    s.mine(1, &payer.address());
    let txid = sent[0]["progress"]["txid"].as_str().unwrap().parse().unwrap();
    assert!(matches!(s.node.rpc.transaction_info(&txid).unwrap(), Some((_, Some(_)))), "mined");
    let left = json(dir, &["status"], &[REAL])["allowance_sat"].as_u64().unwrap();
    assert!(left < 200_000 && left > 198_000, "{left}");
}

#[test]
fn with_a_ledger_the_wallet_vaults_and_spends_the_same_on_a_real_bitcoind() {
    let Some(ledger) = emulated_ledger().filter(|_| auto_approved()) else {
        eprintln!("skipped: no emulated Ledger approving every prompt");
        return;
    };
    let Some(core) = vigil_testenv::process::bitcoind() else { return };
    let guardians: Vec<String> = ExamplePolicy::default().keys().guardians.iter().map(account_key).collect();
    let OnDevice { s, _home, dir, payer, .. } = on_device(core, &ledger, &guardians);
    json(&dir, &["signer", "register"], &[REAL]);
    let address = address_from(&dir, &["receive", "--on-device"]);
    payer.pay(&s.node.rpc, 1, address.script_pubkey(), Amount::from_sat(30_000_000));
    mine(&s.node.rpc, 1, &payer.address());
    // Every transaction the device signs goes through Bitcoin Core's mempool and into a block.
    let made = json(&dir, &["vault", "0.05"], &[REAL]);
    assert_eq!(made["state"], "protected", "{made}");
    mine(&s.node.rpc, 1, &payer.address());
    let to = Wallet::new().address().to_string();
    let started = json(&dir, &["spend", &to, "0.01"], &[REAL]);
    assert_eq!(started[0]["progress"]["stage"], "unlocking", "{started}");
    mine(&s.node.rpc, 1, &payer.address());
    spend_to_the_end(&s, &dir, &payer);
    allowance_spend_on_the_device(&s, &dir, &payer, 2);
}

#[test]
fn with_a_ledger_coins_of_an_earlier_policy_version_fund_a_vault_signed_once_per_account() {
    let Some(ledger) = emulated_ledger().filter(|_| auto_approved()) else {
        eprintln!("skipped: no emulated Ledger approving every prompt");
        return;
    };
    let (keys, guardian_keys, xpubs) = guardians_made_by_cli(2);
    let OnDevice { s, _home, dir, payer, .. } = on_device(vigil_node(), &ledger, &xpubs);
    json(&dir, &["signer", "register"], &[REAL]);
    let pay_intake = |dir: &Path, coin: u32| {
        let address = address_from(dir, &["receive"]);
        payer.pay(&s.node.rpc, coin, address.script_pubkey(), Amount::from_sat(10_000_000));
        mine(&s.node.rpc, 1, &payer.address());
    };
    pay_intake(&dir, 1);
    pay_intake(&dir, 3);

    // The guardians' quorum changes the policy (new intake scripts); once it applies, a coin
    // is paid to version 2's intake address too.
    let (_, effective) = guardians_sign_version_2(&dir, keys.path(), &guardian_keys);
    let tip = s.node.rpc.tip().unwrap().height;
    mine(&s.node.rpc, effective - tip, &payer.address());
    assert_eq!(json(&dir, &["status"], &[REAL])["policy_version"], 2);
    // A vault of one coin received before the change needs only version 1's account: the
    // device has not registered version 2's yet, and is not asked to.
    let (ok, out, err) = vigil(&dir, &["vault", "0.05", "--json"], &[REAL]);
    assert!(ok, "{err}");
    assert!(!err.contains("(1 of 2)") && !err.contains("signer register"), "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["state"], "protected", "{out}");
    mine(&s.node.rpc, 1, &payer.address());
    // Version 2's accounts are new to the device: registered first.
    let registered = json(&dir, &["signer", "register"], &[REAL]);
    assert!(registered["registered"].as_array().unwrap().iter().all(|r| r["new"] == true), "{registered}");
    pay_intake(&dir, 2);

    // A vault that needs both coins: the device signs once per intake account, each input
    // through its own version's leaf; checked, co-signed and mined.
    let (ok, out, err) = vigil(&dir, &["vault", "0.15", "--json"], &[REAL]);
    assert!(ok, "{err}");
    assert!(err.contains("(1 of 2)") && err.contains("(2 of 2)"), "{err}");
    let made: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made["state"], "protected", "{made}");
    mine(&s.node.rpc, 1, &payer.address());
    let status = json(&dir, &["status"], &[REAL]);
    assert_eq!(status["vault_sat"], 20_000_000, "{status}");
    assert!(status["vaults"].as_array().unwrap().iter().all(|v| v["policy_version"] == 2), "{status}");
}

#[test]
fn with_a_ledger_a_rejected_or_unplugged_signing_leaves_nothing_half_done_and_resumes() {
    use std::sync::{Arc, Mutex};
    use vigil_testenv::ledger::{Answer, Cable, Holder};
    // The test is the holder: the harness's approver is off (LEDGER_APPROVE=off).
    let Some(device) = emulated_ledger().filter(|_| !auto_approved()) else {
        eprintln!("skipped: no emulated Ledger whose buttons this test presses (LEDGER_APPROVE=off)");
        return;
    };
    let api = std::env::var("LEDGER_SPECULOS_API").unwrap();
    // The holder's answer to a registration, and to everything else.
    let answer = Arc::new(Mutex::new((Answer::Approve, Answer::Approve)));
    let holder = {
        let answer = answer.clone();
        Holder::start(&api, move |review| {
            let (to_registration, to_others) = *answer.lock().unwrap();
            match review.first() {
                Some(p) if p.starts_with("Review account") => to_registration,
                _ => to_others,
            }
        })
    };
    let says = |a: Answer| *answer.lock().unwrap() = (a, a);
    let cable = Cable::new(device.parse().unwrap());
    let s = services("", false);
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("wallet");
    let payer = Wallet::new();
    mine(&s.node.rpc, 120, &payer.address());
    let guardians: Vec<String> = ExamplePolicy::default().keys().guardians.iter().map(account_key).collect();
    let through_cable = cable.addr.to_string();
    let (ok, _, err) =
        init_with_extra(&s, &dir, &guardians, &["--signer", "ledger", "--signer-emulator", &through_cable]);
    assert!(ok, "{err}");
    // The holder rejects the registration: said, nothing kept; then approves it.
    says(Answer::Reject);
    let (ok, _, err) = vigil(&dir, &["signer", "register"], &[REAL]);
    assert!(
        !ok && err.contains("you rejected it on the device") && err.contains("Nothing was registered"),
        "{err}"
    );
    let record: Value = serde_json::from_slice(&std::fs::read(dir.join("signer.json")).unwrap()).unwrap();
    assert_eq!(record["registrations"], serde_json::json!({}), "{record}");
    says(Answer::Approve);
    json(&dir, &["signer", "register"], &[REAL]);
    let address = address_from(&dir, &["receive"]);
    payer.pay(&s.node.rpc, 1, address.script_pubkey(), Amount::from_sat(30_000_000));
    mine(&s.node.rpc, 1, &payer.address());
    let intake_sat = |dir: &Path| json(dir, &["status"], &[REAL])["intake_sat"].as_u64().unwrap();
    assert_eq!(intake_sat(&dir), 30_000_000);

    // Rejected on the device: a clear message, nothing moved, the vault resumable.
    says(Answer::Reject);
    let (ok, _, err) = vigil(&dir, &["vault", "0.05"], &[REAL]);
    assert!(
        !ok && err.contains("you rejected it on the device") && err.contains("Nothing was moved"),
        "{err}"
    );
    assert!(err.contains("vigil vault --resume"), "{err}");
    mine(&s.node.rpc, 1, &payer.address());
    assert_eq!(intake_sat(&dir), 30_000_000, "no coin moved");

    // A waiting funding this wallet did not build (its record changed to pay someone else)
    // is refused before it reaches the device.
    let state_file = dir.join("state.json");
    let kept = std::fs::read(&state_file).unwrap();
    let mut state: Value = serde_json::from_slice(&kept).unwrap();
    let pending = &mut state["pending_vault"];
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut psbt = vigil_policy::bitcoin::psbt::Psbt::deserialize(
        &b64.decode(pending["unsigned_psbt"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    psbt.unsigned_tx.output[0].script_pubkey = payer.address().script_pubkey();
    pending["unsigned_psbt"] = b64.encode(psbt.serialize()).into();
    pending["unsigned_funding"] =
        vigil_policy::bitcoin::consensus::encode::serialize_hex(&psbt.unsigned_tx).into();
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let reviews = |h: &Holder| h.pages().iter().filter(|p| p.starts_with("Review transaction")).count();
    let before = reviews(&holder);
    let (ok, _, err) = vigil(&dir, &["vault", "--resume"], &[REAL]);
    assert!(!ok && err.contains("does not pay the vault's own output"), "{err}");
    assert_eq!(reviews(&holder), before, "the device was never asked");
    std::fs::write(&state_file, &kept).unwrap();

    // Approved on the second try: the vault is made and funded.
    says(Answer::Approve);
    let resumed = json(&dir, &["vault", "--resume"], &[REAL]);
    assert_eq!(resumed["state"], "protected", "{resumed}");
    mine(&s.node.rpc, 1, &payer.address());
    assert_eq!(json(&dir, &["status"], &[REAL])["vault_sat"], 5_000_000);

    // Unplugged while the holder reads the transaction: the same.
    says(Answer::Wait);
    let child = start(&dir, &["vault", "0.05"], &[REAL], "warn", Stdio::piped);
    eventually("the device shows the transaction", || {
        holder.pages().last().filter(|p| *p == "Sign transaction").map(drop)
    });
    cable.pull();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the device went away") && err.contains("Nothing was moved"),
        "{err}"
    );
    says(Answer::Reject); // the holder clears the screen of the device left waiting
    eventually("the device is idle", || {
        (holder.pages().last()? == "Bitcoin Testnet app is ready").then_some(())
    });
    cable.plug();
    says(Answer::Approve);
    let resumed = json(&dir, &["vault", "--resume"], &[REAL]);
    assert_eq!(resumed["state"], "protected", "{resumed}");
    mine(&s.node.rpc, 1, &payer.address());
    assert_eq!(json(&dir, &["status"], &[REAL])["vault_sat"], 10_000_000);

    // A vault spend rejected: first the vault's account, which the device registers before it
    // signs; then, the account approved, the signing. Each is said, nothing is asked of the
    // co-signer (the spend has no request id), and `spend --resume` shows it again.
    let to = Wallet::new().address().to_string();
    let rejected = |args: &[&str]| {
        let (ok, _, err) = vigil(&dir, args, &[REAL]);
        assert!(
            !ok && err.contains("you rejected it on the device") && err.contains("Nothing was sent"),
            "{err}"
        );
        assert!(err.contains("vigil spend --resume"), "{err}");
        let state: Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
        assert_eq!(state["spends"][0]["id"], 0, "the co-signer was not asked: {}", state["spends"]);
        err
    };
    says(Answer::Reject);
    rejected(&["spend", &to, "0.01"]);
    *answer.lock().unwrap() = (Answer::Approve, Answer::Reject);
    let err = rejected(&["spend", "--resume"]);
    assert!(err.contains("registers the account \"Vigil vault"), "{err}");
    says(Answer::Approve);
    let resumed = json(&dir, &["spend", "--resume"], &[REAL]);
    assert_eq!(resumed[0]["progress"]["stage"], "unlocking", "{resumed}");

    // An allowance payment rejected: nothing sent; approved, it goes.
    let hot = address_from(&dir, &["receive", "--allowance"]);
    payer.pay(&s.node.rpc, 2, hot.script_pubkey(), Amount::from_sat(300_000));
    mine(&s.node.rpc, 1, &payer.address());
    says(Answer::Reject);
    let (ok, _, err) = vigil(&dir, &["spend", &to, "0.001"], &[REAL]);
    assert!(
        !ok && err.contains("you rejected it on the device") && err.contains("Nothing was sent"),
        "{err}"
    );
    mine(&s.node.rpc, 1, &payer.address());
    assert_eq!(json(&dir, &["status"], &[REAL])["allowance_sat"], 300_000, "nothing left the allowance");
    says(Answer::Approve);
    let sent = json(&dir, &["spend", &to, "0.001"], &[REAL]);
    assert_eq!(sent[0]["progress"]["stage"], "sent from the allowance", "{sent}");

    // A kept registration the device refuses, whose new registration the holder rejects:
    // nothing is done, and the message names the step that lets the vault go on.
    let signer_file = dir.join("signer.json");
    let mut altered: Value = serde_json::from_slice(&std::fs::read(&signer_file).unwrap()).unwrap();
    for (_, pair) in altered["registrations"].as_object_mut().unwrap() {
        let hmac = pair[1].as_str().unwrap();
        pair[1] = format!("{}{}", if hmac.starts_with('0') { "1" } else { "0" }, &hmac[1..]).into();
    }
    std::fs::write(&signer_file, serde_json::to_vec(&altered).unwrap()).unwrap();
    *answer.lock().unwrap() = (Answer::Reject, Answer::Approve);
    let (ok, _, err) = vigil(&dir, &["vault", "0.05"], &[REAL]);
    assert!(
        !ok && err.contains("you rejected it on the device")
            && err.contains("run `vigil signer register` when ready, then the same command again"),
        "{err}"
    );
    says(Answer::Approve);
    json(&dir, &["signer", "register"], &[REAL]);
    let made = json(&dir, &["vault", "0.05"], &[REAL]);
    assert_eq!(made["state"], "protected", "{made}");
}

#[test]
fn with_a_ledger_the_duress_code_asks_the_same_of_the_device_and_says_the_same() {
    let Some(ledger) = emulated_ledger().filter(|_| auto_approved()) else {
        eprintln!("skipped: no emulated Ledger approving every prompt");
        return;
    };
    let api = std::env::var("LEDGER_SPECULOS_API").unwrap();
    let guardians: Vec<String> = ExamplePolicy::default().keys().guardians.iter().map(account_key).collect();
    // Through a cable that records every command sent to the device.
    let cable = vigil_testenv::ledger::Cable::new(ledger.parse().unwrap());
    let OnDevice { s, _home, dir, payer, .. } = on_device(vigil_node(), &cable.addr.to_string(), &guardians);
    json(&dir, &["signer", "register"], &[REAL]);
    let address = address_from(&dir, &["receive"]);
    payer.pay(&s.node.rpc, 1, address.script_pubkey(), Amount::from_sat(30_000_000));
    mine(&s.node.rpc, 1, &payer.address());
    // Three vaults within the velocity limit: all three spends are the co-signer's alone.
    for _ in 0..3 {
        json(&dir, &["vault", "0.03"], &[REAL]);
        mine(&s.node.rpc, 1, &payer.address());
    }
    let hot = address_from(&dir, &["receive", "--allowance"]);
    payer.pay(&s.node.rpc, 2, hot.script_pubkey(), Amount::from_sat(500_000));
    mine(&s.node.rpc, 1, &payer.address());
    json(&dir, &["status"], &[REAL]);
    // The same spend asked under each code: what the computer says, every page the device
    // shows (addresses and numbers masked), in order, and every command sent to it (its
    // header: class, instruction, parameters), in order.
    let page = |text: &str| match text.split_once(')') {
        Some((title, _))
            if ["To (", "Address (", "Dummy key@", "Their key@", "Our key@"]
                .iter()
                .any(|t| text.starts_with(t)) =>
        {
            title.to_owned()
        }
        _ => masked(text),
    };
    let session = |code: &str, amount: &str| {
        let watcher = vigil_testenv::ledger::Watcher::start(&api, None);
        cable.take_commands();
        let to = Wallet::new().address().to_string();
        let (ok, out, err) = vigil(&dir, &["spend", &to, amount], &[code]);
        assert!(ok, "{err}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let pages: Vec<String> = watcher
            .pages()
            .iter()
            .filter(|p| !vigil_testenv::ledger::is_spinner(p))
            .map(|p| page(p))
            .collect();
        // Each key is shown abbreviated (`tpubDFAq…Lfm4dK`): masked whole, letters too.
        let keys_masked: String = err
            .replace(&to, "")
            .lines()
            .map(|l| match l.rsplit_once(": ") {
                Some((who, key)) if key.contains('…') => format!("{who}: KEY\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        (masked(&out.replace(&to, "")), masked(&keys_masked), pages, cable.take_commands())
    };
    // The app's command to sign a PSBT.
    let signs = |commands: &[[u8; 4]]| commands.iter().any(|c| c[..2] == [0xe1, 0x04]);
    // A first spend, so that both measured ones find the wallet's lists in the same shape.
    session(REAL, "0.01");
    let real = session(REAL, "0.01");
    let duress = session(DURESS, "0.01");
    assert!(real.2.iter().any(|p| p.starts_with("Sign transaction")), "{:?}", real.2);
    assert_eq!(real.0, duress.0, "the same answer");
    assert_eq!(real.1, duress.1, "the same prompts, the same words about the device");
    assert_eq!(real.2, duress.2, "the same pages on the device, in the same order");
    assert!(signs(&real.3), "{:02x?}", real.3);
    assert_eq!(real.3, duress.3, "the same commands to the device, in the same order");
    eprintln!(
        "a spend on the device, either code:\n{}{}\npages: {:?}\n{} commands to the device",
        duress.1,
        duress.0,
        duress.2,
        duress.3.len()
    );
    // The allowance, on the device too, really pays under either code, asked the same way.
    let real = session(REAL, "0.001");
    mine(&s.node.rpc, 1, &payer.address());
    let duress = session(DURESS, "0.001");
    assert!(real.2.iter().any(|p| p.starts_with("Sign transaction")), "{:?}", real.2);
    assert!(real.0.contains("from your allowance"), "{}", real.0);
    // The change goes back to the allowance's change branch: the device shows one payment.
    assert_eq!(real.2.iter().filter(|p| p.starts_with("Amount")).count(), 1, "{:?}", real.2);
    assert!(signs(&real.3), "{:02x?}", real.3);
    assert_eq!(real, duress, "the same for an allowance payment");
}
