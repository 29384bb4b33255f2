//! Output descriptors as Core prints them: the `desc` Core infers for every script it shows
//! (`InferDescriptor` with no keys known), and `getdescriptorinfo`'s analysis.
//!
//! Parsing is the `miniscript` crate's; what it does not know (`addr`, `raw`, `rawtr`,
//! `combo`) is read here, and keys are written back in Core's form: an extended private key
//! as its root's public key with the same path, each key's hardened marker as the user wrote
//! it (`'` or `h`), lowercase hex.

use std::str::FromStr;

use miniscript::bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, Xpub};
use miniscript::bitcoin::hex::{DisplayHex, FromHex};
use miniscript::bitcoin::secp256k1::{Secp256k1, XOnlyPublicKey};
use miniscript::bitcoin::{Address, Network, PublicKey, Script};
use miniscript::descriptor::checksum::desc_checksum;
use miniscript::descriptor::{DescriptorPublicKey, DescriptorSecretKey, SinglePubKey, Wildcard};
use miniscript::{Descriptor, ForEachKey, TranslateErr, TranslatePk, Translator};
use serde_json::{json, Value};

/// `desc#checksum`.
pub(crate) fn with_checksum(desc: &str) -> String {
    let sum = desc_checksum(desc).expect("inferred descriptors use the descriptor charset");
    format!("{desc}#{sum}")
}

/// Core's `InferDescriptor` for a script whose keys and scripts nobody told it: `pk` and
/// `multi` for bare keys, `rawtr` for a taproot output, `addr` for anything with an address,
/// else `raw`.
pub(crate) fn infer(script: &Script) -> String {
    let body = if let Some(key) = script.p2pk_public_key() {
        format!("pk({key})")
    } else if let Some((k, keys)) = bare_multisig(script) {
        let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
        format!("multi({k},{})", keys.join(","))
    } else if let Some(key) =
        Some(script).filter(|s| s.is_p2tr()).and_then(|s| XOnlyPublicKey::from_slice(&s.as_bytes()[2..]).ok())
    {
        format!("rawtr({key})")
    } else if let Some(a) = Address::from_script(script, Network::Regtest)
        .ok()
        .filter(|a| a.script_pubkey().as_script() == script)
    {
        format!("addr({a})")
    } else {
        format!("raw({})", script.as_bytes().to_lower_hex_string())
    };
    with_checksum(&body)
}

/// `OP_k <key>... OP_n OP_CHECKMULTISIG` (Core's `MULTISIG` template): k and the keys.
pub(crate) fn bare_multisig(script: &Script) -> Option<(u8, Vec<PublicKey>)> {
    use miniscript::bitcoin::blockdata::script::Instruction;
    use miniscript::bitcoin::opcodes::all::OP_CHECKMULTISIG;
    let ins: Vec<Instruction> = script.instructions().collect::<Result<_, _>>().ok()?;
    let small = |i: &Instruction| match i {
        Instruction::Op(op) => (0x51..=0x60).contains(&op.to_u8()).then(|| op.to_u8() - 0x50),
        _ => None,
    };
    let (last, rest) = ins.split_last()?;
    let (first, rest) = rest.split_first()?;
    let (n, keys) = rest.split_last()?;
    if *last != Instruction::Op(OP_CHECKMULTISIG) {
        return None;
    }
    let (k, n) = (small(first)?, small(n)?);
    let keys: Vec<PublicKey> = keys
        .iter()
        .map(|i| match i {
            Instruction::PushBytes(b) => PublicKey::from_slice(b.as_bytes()).ok(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    (k <= n && keys.len() == n as usize).then_some((k, keys))
}

/// `getdescriptorinfo`: the descriptor normalized with its checksum (the first expansion of a
/// multipath one, all of them in `multipath_expansion`), the checksum of the descriptor as
/// given, and whether it is ranged, solvable and holds private keys. Errors are Core's
/// `RPC_INVALID_ADDRESS_OR_KEY` messages.
pub(crate) fn info(input: &str) -> Result<Value, String> {
    let (body, given) = match input.split_once('#') {
        Some((b, g)) => (b, Some(g)),
        None => (input, None),
    };
    let checksum = desc_checksum(body).map_err(|e| e.to_string())?;
    if let Some(given) = given {
        if given.len() != 8 {
            return Err(format!("Expected 8 character checksum, not {} characters", given.len()));
        }
        if given != checksum {
            return Err(format!("Provided checksum '{given}' does not match computed checksum '{checksum}'"));
        }
    }
    let parsed = parse(body)?;
    let mut v = json!({
        "descriptor": with_checksum(&parsed.expansions[0]),
        "checksum": checksum,
        "isrange": parsed.range,
        "issolvable": parsed.solvable,
        "hasprivatekeys": parsed.private,
    });
    if parsed.expansions.len() > 1 {
        v["multipath_expansion"] =
            json!(parsed.expansions.iter().map(|d| with_checksum(d)).collect::<Vec<_>>());
    }
    Ok(v)
}

struct Parsed {
    /// Core's `ToString()` of each expansion, without checksum.
    expansions: Vec<String>,
    range: bool,
    solvable: bool,
    private: bool,
}

fn parse(body: &str) -> Result<Parsed, String> {
    let inner = |name: &str| {
        body.strip_prefix(name).and_then(|r| r.strip_prefix('(')).and_then(|r| r.strip_suffix(')'))
    };
    if let Some(a) = inner("addr") {
        let address = a
            .parse::<Address<_>>()
            .ok()
            .and_then(|a| a.require_network(Network::Regtest).ok())
            .ok_or_else(|| "Address is not valid".to_owned())?;
        return Ok(Parsed {
            expansions: vec![format!("addr({address})")],
            range: false,
            solvable: false,
            private: false,
        });
    }
    if let Some(h) = inner("raw") {
        let bytes = Vec::<u8>::from_hex(h).ok().filter(|b| !b.is_empty()).ok_or("Raw script is not hex")?;
        let expansions = vec![format!("raw({})", bytes.to_lower_hex_string())];
        return Ok(Parsed { expansions, range: false, solvable: false, private: false });
    }
    // One key, in a script miniscript does not describe.
    for name in ["rawtr", "combo"] {
        if let Some(k) = inner(name) {
            let key = CoreKey::parse(k, name == "rawtr")?;
            let expansions = (0..key.paths).map(|i| format!("{name}({})", key.render(i))).collect();
            return Ok(Parsed { expansions, range: key.range, solvable: true, private: key.private });
        }
    }
    let secp = Secp256k1::new();
    let (desc, keys) = Descriptor::parse_descriptor(&secp, body).map_err(|e| e.to_string())?;
    let strings = Descriptor::<String>::from_str(body).map_err(|e| e.to_string())?;
    let taproot = matches!(desc, Descriptor::Tr(_));
    let mut paths = 1;
    desc.for_each_key(|k| {
        if let DescriptorPublicKey::MultiXPub(x) = k {
            paths = paths.max(x.derivation_paths.paths().len());
        }
        true
    });
    let expansions = (0..paths)
        .map(|pick| {
            strings.translate_pk(&mut CoreKeys { pick, taproot }).map(|d| format!("{d:#}")).map_err(|e| {
                match e {
                    TranslateErr::TranslatorErr(e) => e,
                    TranslateErr::OuterError(e) => e.to_string(),
                }
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Parsed { expansions, range: desc.has_wildcard(), solvable: true, private: !keys.is_empty() })
}

/// Rewrites each key as Core prints it, taking the `pick`th path of multipath keys.
struct CoreKeys {
    pick: usize,
    taproot: bool,
}

impl Translator<String, String, String> for CoreKeys {
    fn pk(&mut self, pk: &String) -> Result<String, String> {
        Ok(CoreKey::parse(pk, self.taproot)?.render(self.pick))
    }
    fn sha256(&mut self, h: &String) -> Result<String, String> {
        Ok(h.clone())
    }
    fn hash256(&mut self, h: &String) -> Result<String, String> {
        Ok(h.clone())
    }
    fn ripemd160(&mut self, h: &String) -> Result<String, String> {
        Ok(h.clone())
    }
    fn hash160(&mut self, h: &String) -> Result<String, String> {
        Ok(h.clone())
    }
}

/// A key expression as Core keeps it: origin, public key (extended or not), paths, wildcard.
struct CoreKey {
    origin: Option<(Fingerprint, DerivationPath)>,
    /// The key itself, or an extended key with its derivation paths (one unless multipath).
    key: Result<String, (Xpub, Vec<DerivationPath>, Wildcard)>,
    apostrophe: bool,
    paths: usize,
    range: bool,
    private: bool,
}

impl CoreKey {
    fn parse(s: &str, taproot: bool) -> Result<CoreKey, String> {
        let secp = Secp256k1::new();
        let apostrophe = uses_apostrophe(s);
        let single = |origin, key: String, private| CoreKey {
            origin,
            key: Ok(key),
            apostrophe,
            paths: 1,
            range: false,
            private,
        };
        let extended = |origin, xpub, paths: Vec<DerivationPath>, wildcard, private| CoreKey {
            origin,
            apostrophe,
            paths: paths.len(),
            range: wildcard != Wildcard::None,
            key: Err((xpub, paths, wildcard)),
            private,
        };
        if let Ok(secret) = DescriptorSecretKey::from_str(s) {
            return Ok(match secret {
                DescriptorSecretKey::Single(k) => {
                    let pk = k.key.public_key(&secp);
                    // Core shows a WIF key inside tr() as its x-only key.
                    let hex =
                        if taproot { pk.inner.x_only_public_key().0.to_string() } else { pk.to_string() };
                    single(k.origin, hex, true)
                }
                DescriptorSecretKey::XPrv(x) => extended(
                    x.origin,
                    Xpub::from_priv(&secp, &x.xkey),
                    vec![x.derivation_path],
                    x.wildcard,
                    true,
                ),
                DescriptorSecretKey::MultiXPrv(x) => extended(
                    x.origin,
                    Xpub::from_priv(&secp, &x.xkey),
                    x.derivation_paths.into_paths(),
                    x.wildcard,
                    true,
                ),
            });
        }
        Ok(match DescriptorPublicKey::from_str(s).map_err(|e| e.to_string())? {
            DescriptorPublicKey::Single(k) => {
                let hex = match k.key {
                    SinglePubKey::FullKey(pk) => pk.to_string(),
                    SinglePubKey::XOnly(x) => x.to_string(),
                };
                single(k.origin, hex, false)
            }
            DescriptorPublicKey::XPub(x) => {
                extended(x.origin, x.xkey, vec![x.derivation_path], x.wildcard, false)
            }
            DescriptorPublicKey::MultiXPub(x) => {
                extended(x.origin, x.xkey, x.derivation_paths.into_paths(), x.wildcard, false)
            }
        })
    }

    fn render(&self, pick: usize) -> String {
        let mut out = String::new();
        if let Some((fingerprint, path)) = &self.origin {
            out += &format!("[{fingerprint}{}]", self.path(path));
        }
        match &self.key {
            Ok(hex) => out += hex,
            Err((xpub, paths, wildcard)) => {
                out += &xpub.to_string();
                out += &self.path(&paths[pick.min(paths.len() - 1)]);
                out += match wildcard {
                    Wildcard::None => "",
                    Wildcard::Unhardened => "/*",
                    Wildcard::Hardened if self.apostrophe => "/*'",
                    Wildcard::Hardened => "/*h",
                };
            }
        }
        out
    }

    fn path(&self, path: &DerivationPath) -> String {
        let marker = if self.apostrophe { "'" } else { "h" };
        path.into_iter()
            .map(|c| match c {
                ChildNumber::Normal { index } => format!("/{index}"),
                ChildNumber::Hardened { index } => format!("/{index}{marker}"),
            })
            .collect()
    }
}

/// Which hardened marker Core prints for a key: the last one it read, reading the origin, then
/// the wildcard, then the key's path (`h` when there is none).
fn uses_apostrophe(s: &str) -> bool {
    let (origin, rest) = match s.strip_prefix('[') {
        Some(r) => r.split_once(']').unwrap_or((r, "")),
        None => ("", s),
    };
    let mut apostrophe = None;
    let mut read = |element: &str| {
        for step in element.trim_start_matches('<').trim_end_matches('>').split(';') {
            match step.chars().last() {
                Some('\'') => apostrophe = Some(true),
                Some('h') => apostrophe = Some(false),
                _ => {}
            }
        }
    };
    origin.split('/').skip(1).for_each(&mut read);
    let mut steps: Vec<&str> = rest.split('/').skip(1).collect();
    if let Some(w) = steps.last().copied().filter(|w| w.starts_with('*')) {
        steps.pop();
        read(w);
    }
    steps.into_iter().for_each(read);
    apostrophe.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniscript::bitcoin::bip32::Xpriv;

    fn xpub() -> String {
        let secp = Secp256k1::new();
        Xpub::from_priv(&secp, &Xpriv::new_master(Network::Regtest, &[7; 32]).unwrap()).to_string()
    }

    #[test]
    fn scripts_are_described_as_core_infers_them() {
        let p2a = Script::from_bytes(&[0x51, 0x02, 0x4e, 0x73]);
        assert_eq!(infer(p2a), with_checksum("addr(bcrt1pfeesnyr2tx)"));
        assert_eq!(infer(Script::from_bytes(&[0x6a, 0x01, 0x01])), with_checksum("raw(6a0101)"));
    }

    #[test]
    fn descriptors_are_normalized_as_core_does() {
        let body = |v: &Value| v["descriptor"].as_str().unwrap().split('#').next().unwrap().to_owned();
        let xpub = xpub();
        let d = info(&format!("wpkh([D34DB33F/84h/1h/0h]{xpub}/0/*)")).unwrap();
        assert_eq!(body(&d), format!("wpkh([d34db33f/84h/1h/0h]{xpub}/0/*)"));
        assert_eq!((d["isrange"].as_bool(), d["hasprivatekeys"].as_bool()), (Some(true), Some(false)));
        let d = info(&format!("wsh(multi(1,[d34db33f/48'/1'/0'/2']{xpub}/<0;1>/*,{xpub}/1h/*h))")).unwrap();
        assert_eq!(body(&d), format!("wsh(multi(1,[d34db33f/48'/1'/0'/2']{xpub}/0/*,{xpub}/1h/*h))"));
        assert_eq!(d["multipath_expansion"].as_array().unwrap().len(), 2);
        let d = info("raw(6A00)").unwrap();
        assert_eq!(body(&d), "raw(6a00)");
        assert_eq!(d["checksum"].as_str(), desc_checksum("raw(6A00)").ok().as_deref(), "of the input");
        assert_eq!(d["issolvable"], false);
        assert!(info("wpkh(nonsense)").is_err());
        assert!(info("raw(6a00)#00000000").is_err());
        assert!(info("addr(bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq)").is_err(), "mainnet");
    }
}
