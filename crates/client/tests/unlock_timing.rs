//! The real code and the duress code take the same time to unlock: ≥ 50 unlocks each,
//! interleaved in a random order, and a Mann–Whitney U test that cannot tell them apart.

use std::time::{Duration, Instant};

use vigil_client::owner;
use vigil_keystore::KdfParams;
use vigil_policy::bitcoin::secp256k1::rand::{thread_rng, Rng};
use vigil_policy::bitcoin::Network;
use vigil_testenv::stats::{distribution, mann_whitney_z, Z_P001};

#[test]
fn real_and_duress_unlocks_take_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    // Lighter stretching than a wallet's, so the test is quick; the work per unlock has the
    // same shape (the unlock benchmark measures the real parameters).
    let kdf = KdfParams { m_cost_kib: 8 * 1024, t_cost: 1, lanes: 1 };
    owner::create(dir.path(), &owner::new_phrase(), b"2468", b"1357", Network::Regtest, kdf).unwrap();
    let (mut real, mut duress) = (Vec::new(), Vec::new());
    let time = |code: &[u8]| -> Duration {
        let start = Instant::now();
        owner::unlock(dir.path(), code, Network::Regtest).unwrap();
        start.elapsed()
    };
    // Warm up caches and the allocator.
    for _ in 0..5 {
        time(b"2468");
        time(b"1357");
    }
    for _ in 0..60 {
        if thread_rng().gen::<bool>() {
            real.push(time(b"2468"));
            duress.push(time(b"1357"));
        } else {
            duress.push(time(b"1357"));
            real.push(time(b"2468"));
        }
    }
    let z = mann_whitney_z(&real, &duress);
    eprintln!("real:   {}\nduress: {}\nMann-Whitney z = {z:.2}", distribution(&real), distribution(&duress));
    assert!(z.abs() < Z_P001, "the two unlock times are told apart (z = {z:.2})");
}
