//! What a light client can check of the headers an Electrum server sends.
//!
//! A header's merkle root is what proves a transaction into a block, so a server that could
//! invent headers could "prove" any confirmation (of a cancel that never happened, say). Each
//! header is therefore checked for:
//! - **its own work**: its hash meets the target its bits encode, and that target is within
//!   the network's limit;
//! - **a time not beyond two hours ahead** (Bitcoin Core's own bound): a forger cannot lower
//!   the difficulty with future timestamps;
//! - **the difficulty its height requires**, where the network's rules let a light client
//!   tell. On mainnet and signet every header of a 2,016-block period carries the same bits,
//!   and each period's bits follow from the previous period's and the time between its first
//!   and last header. [`Periods`] verifies that chain of periods from genesis (two headers per
//!   period, each with its own work at its period's bits), so no server can make a header
//!   acceptable by also sending an easy "period start" beside it. On regtest the difficulty
//!   is fixed. Testnets allow minimum-difficulty blocks whenever blocks are slow, so there a
//!   light client can only check each header's own work.
//!
//! What remains: the headers between a period's first and last are not linked to each other,
//! so a server willing to spend real work can still forge. Lowering the difficulty through
//! the periods costs it more than a block of real work at the network's difficulty (each
//! step down is at most 4x and needs two headers mined at the step's difficulty), and it
//! still cannot choose which of two branches carries the most work beyond the headers asked
//! for, nor stop hiding transactions; towers on independent backends cover that.

use bitcoin::block::Header;
use bitcoin::params::Params;
use bitcoin::pow::CompactTarget;
use bitcoin::{BlockHash, Network};

/// Blocks per difficulty period.
pub const DIFFICULTY_PERIOD: u32 = 2_016;

/// How far ahead of the clock a header's time may be, seconds (as in Bitcoin Core).
pub const MAX_FUTURE_SECS: u32 = 2 * 60 * 60;

/// The network whose genesis block hashes to `genesis`.
pub fn network_of(genesis: &BlockHash) -> Option<Network> {
    [Network::Bitcoin, Network::Testnet, Network::Testnet4, Network::Signet, Network::Regtest]
        .into_iter()
        .find(|n| bitcoin::constants::genesis_block(*n).block_hash() == *genesis)
}

/// A network's header rules.
#[derive(Debug, Clone)]
pub struct HeaderRules {
    params: Params,
}

impl HeaderRules {
    /// The rules of `network`.
    pub fn new(network: Network) -> HeaderRules {
        HeaderRules { params: Params::new(network) }
    }

    /// Rules with other parameters (an easy retargeting chain, in tests).
    pub fn with_params(params: Params) -> HeaderRules {
        HeaderRules { params }
    }

    /// The network.
    pub fn network(&self) -> Network {
        self.params.network
    }

    /// A header's own proof of work: its hash meets its target, within the network's limit.
    pub fn check_work(&self, height: u32, header: &Header) -> Result<BlockHash, String> {
        let target = header.target();
        if target > self.params.max_attainable_target {
            return Err(format!("the header at height {height} claims a target above the network's limit"));
        }
        header.validate_pow(target).map_err(|_| {
            format!("the header at height {height} does not carry the proof of work its bits claim")
        })
    }

    /// A header's time is at most [`MAX_FUTURE_SECS`] past `now` (Unix seconds).
    pub fn check_time(&self, height: u32, header: &Header, now: u32) -> Result<(), String> {
        if header.time > now.saturating_add(MAX_FUTURE_SECS) {
            return Err(format!(
                "the header at height {height} is timed {} s in the future",
                header.time - now
            ));
        }
        Ok(())
    }

    /// Whether each period's difficulty follows from the previous one (mainnet, signet), so
    /// [`Periods`] must be verified up to a header's period before its bits can be judged.
    pub fn retargets(&self) -> bool {
        !self.params.no_pow_retargeting && !self.params.allow_min_difficulty_blocks
    }

    /// The header's bits are those its height requires: on a retargeting network `period_bits`
    /// (from [`Periods::bits`]), on regtest its fixed minimum difficulty; on testnets anything
    /// its own work meets.
    pub fn check_difficulty(
        &self,
        height: u32,
        header: &Header,
        period_bits: Option<CompactTarget>,
    ) -> Result<(), String> {
        let expected = if self.params.no_pow_retargeting {
            self.params.max_attainable_target.to_compact_lossy()
        } else if self.params.allow_min_difficulty_blocks {
            return Ok(());
        } else {
            period_bits.ok_or_else(|| format!("the difficulty of height {height} is not verified yet"))?
        };
        if header.bits != expected {
            return Err(format!(
                "the header at height {height} has bits {:#010x}; the network's rules require {:#010x}",
                header.bits.to_consensus(),
                expected.to_consensus()
            ));
        }
        Ok(())
    }
}

/// The bits of each difficulty period, verified one period at a time from genesis.
#[derive(Debug, Clone)]
pub struct Periods {
    /// By period number; period 0 carries the genesis block's bits.
    bits: Vec<CompactTarget>,
}

impl Periods {
    /// Only period 0 known: the bits of the genesis block.
    pub fn new(genesis_bits: CompactTarget) -> Periods {
        Periods { bits: vec![genesis_bits] }
    }

    /// The bits of `height`'s period, once verified.
    pub fn bits(&self, height: u32) -> Option<CompactTarget> {
        self.bits.get((height / DIFFICULTY_PERIOD) as usize).copied()
    }

    /// The heights whose headers [`Periods::extend`] needs to verify up to `height`'s period:
    /// the first and the last of each period not verified yet before it.
    pub fn needed(&self, height: u32) -> Vec<u32> {
        let period = height / DIFFICULTY_PERIOD;
        (self.bits.len() as u32..=period)
            .flat_map(|p| [(p - 1) * DIFFICULTY_PERIOD, p * DIFFICULTY_PERIOD - 1])
            .collect()
    }

    /// Verifies the periods up to `height`'s, from the headers [`Periods::needed`] named:
    /// each carries its own work at its period's bits, and the next period's bits are the
    /// retarget of the time between them.
    pub fn extend(
        &mut self,
        rules: &HeaderRules,
        height: u32,
        known: &dyn Fn(u32) -> Option<Header>,
    ) -> Result<(), String> {
        while self.bits.len() as u32 <= height / DIFFICULTY_PERIOD {
            let period = self.bits.len() as u32 - 1;
            let bits = self.bits[period as usize];
            let (first_height, last_height) =
                (period * DIFFICULTY_PERIOD, (period + 1) * DIFFICULTY_PERIOD - 1);
            let header = |h: u32| known(h).ok_or_else(|| format!("the header at height {h} is missing"));
            let (first, last) = (header(first_height)?, header(last_height)?);
            for (h, header) in [(first_height, &first), (last_height, &last)] {
                rules.check_work(h, header)?;
                rules.check_difficulty(h, header, Some(bits))?;
            }
            let timespan = u64::from(last.time.saturating_sub(first.time));
            self.bits.push(CompactTarget::from_next_work_required(bits, timespan, &rules.params));
        }
        Ok(())
    }

    /// Forgets the periods from `height`'s on (a reorganisation across a period boundary can
    /// change the newest period's bits).
    pub fn forget_from(&mut self, height: u32) {
        self.bits.truncate(((height / DIFFICULTY_PERIOD) as usize).max(1));
    }

    /// Whether `height` is in the newest verified period (not period 0, which is genesis's).
    pub fn is_newest(&self, height: u32) -> bool {
        let period = (height / DIFFICULTY_PERIOD) as usize;
        period > 0 && period + 1 == self.bits.len()
    }

    /// How many periods are verified.
    pub fn verified(&self) -> usize {
        self.bits.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use bitcoin::block::Version;
    use bitcoin::hashes::Hash;
    use bitcoin::TxMerkleNode;

    use super::*;

    fn header(prev: BlockHash, bits: u32, time: u32) -> Header {
        Header {
            version: Version::ONE,
            prev_blockhash: prev,
            merkle_root: TxMerkleNode::all_zeros(),
            time,
            bits: CompactTarget::from_consensus(bits),
            nonce: 0,
        }
    }

    #[test]
    fn each_network_is_known_by_its_genesis() {
        for n in [Network::Bitcoin, Network::Testnet, Network::Testnet4, Network::Signet, Network::Regtest] {
            assert_eq!(network_of(&bitcoin::constants::genesis_block(n).block_hash()), Some(n));
        }
        assert_eq!(network_of(&BlockHash::all_zeros()), None);
    }

    #[test]
    fn a_header_must_carry_the_work_its_bits_claim() {
        let rules = HeaderRules::new(Network::Bitcoin);
        let genesis = bitcoin::constants::genesis_block(Network::Bitcoin);
        // Mainnet block 1, as mined.
        let mut one = header(genesis.block_hash(), 0x1d00ffff, 1_231_469_665);
        one.merkle_root = "0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098".parse().unwrap();
        one.nonce = 2_573_394_689;
        assert_eq!(
            rules.check_work(1, &one).unwrap().to_string(),
            "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048"
        );
        // A forged merkle root (a "proof" of some other transaction): no longer meets its target.
        let mut forged = one;
        forged.merkle_root = TxMerkleNode::from_byte_array([7; 32]);
        assert!(rules.check_work(1, &forged).unwrap_err().contains("proof of work"));
        // Regtest's trivial target is far above mainnet's limit.
        let easy = header(genesis.block_hash(), 0x207fffff, 1_231_469_665);
        assert!(rules.check_work(1, &easy).unwrap_err().contains("limit"));
    }

    /// Mainnet's retargeting with an easy limit (a header is mined in a few hundred tries) and
    /// a period of 4 seconds (the retarget multiplies the target by the clamped timespan: this
    /// keeps the product within 256 bits, as mainnet's limit does for two weeks).
    pub(crate) fn easy() -> HeaderRules {
        let mut params = Params::new(Network::Bitcoin);
        params.max_attainable_target = CompactTarget::from_consensus(EASY_BITS).into();
        params.pow_target_timespan = u64::from(PERIOD_SECS);
        HeaderRules::with_params(params)
    }

    /// A header carrying `bits`, timed `time`, mined.
    pub(crate) fn mined(bits: u32, time: u32) -> Header {
        let mut h = header(BlockHash::all_zeros(), bits, time);
        while h.validate_pow(h.target()).is_err() {
            h.nonce += 1;
        }
        h
    }

    const REGTEST_BITS: u32 = 0x207fffff;
    pub(crate) const EASY_BITS: u32 = 0x1f7fffff;
    pub(crate) const PERIOD_SECS: u32 = 4;

    #[test]
    fn each_period_s_bits_follow_from_the_one_before() {
        let rules = easy();
        // Period 0 was mined four times too fast: period 1 is four times harder.
        let period_0 = |h: u32| match h {
            0 => Some(mined(EASY_BITS, 1_000)),
            2015 => Some(mined(EASY_BITS, 1_000 + PERIOD_SECS / 4)),
            _ => None,
        };
        let mut periods = Periods::new(CompactTarget::from_consensus(EASY_BITS));
        assert_eq!(periods.needed(2020), vec![0, 2015]);
        periods.extend(&rules, 2020, &period_0).unwrap();
        let harder = 0x1f1fffff;
        assert_eq!(periods.bits(2020), Some(CompactTarget::from_consensus(harder)));
        assert!(periods.is_newest(2020));
        assert!(rules.check_difficulty(2020, &mined(harder, 0), periods.bits(2020)).is_ok());
        // A header with period 0's easier bits, its own work fine: refused.
        let easier = mined(EASY_BITS, 0);
        rules.check_work(2020, &easier).unwrap();
        let e = rules.check_difficulty(2020, &easier, periods.bits(2020)).unwrap_err();
        assert!(e.contains("require 0x1f1fffff"), "{e}");
        // Nor can a server pass easy headers off as period 1's first and last: period 1 is
        // judged by the bits verified from period 0.
        let liar = |h: u32| match h {
            2016 => Some(mined(EASY_BITS, 1_000 + PERIOD_SECS)),
            4031 => Some(mined(EASY_BITS, 1_000 + 2 * PERIOD_SECS)),
            _ => period_0(h),
        };
        assert_eq!(periods.needed(4040), vec![2016, 4031]);
        let e = periods.clone().extend(&rules, 4040, &liar).unwrap_err();
        assert!(e.contains("height 2016") && e.contains("require"), "{e}");
        // A height whose period is not verified is not judged at all.
        assert!(rules.check_difficulty(4040, &mined(harder, 0), periods.bits(4040)).is_err());
        // A slow period 1 brings the difficulty back down, at most fourfold.
        let slow = |h: u32| match h {
            2016 => Some(mined(harder, 10_000)),
            4031 => Some(mined(harder, 10_000 + 100 * PERIOD_SECS)),
            _ => None,
        };
        periods.extend(&rules, 4040, &slow).unwrap();
        assert_eq!(periods.bits(4040), Some(CompactTarget::from_consensus(0x1f7ffffc)));
        periods.forget_from(4040);
        assert_eq!(periods.verified(), 2);
    }

    #[test]
    fn regtest_is_fixed_testnets_only_check_the_work_and_no_header_is_from_the_future() {
        let prev = BlockHash::all_zeros();
        let regtest = HeaderRules::new(Network::Regtest);
        assert!(!regtest.retargets());
        assert!(regtest.check_difficulty(5, &header(prev, REGTEST_BITS, 0), None).is_ok());
        assert!(regtest.check_difficulty(5, &header(prev, 0x1d00ffff, 0), None).is_err());
        let testnet = HeaderRules::new(Network::Testnet);
        assert!(!testnet.retargets());
        assert!(testnet.check_difficulty(4040, &header(prev, 0x1d00ffff, 0), None).is_ok());
        assert!(HeaderRules::new(Network::Bitcoin).retargets());
        let now = 1_800_000_000;
        assert!(regtest.check_time(5, &header(prev, REGTEST_BITS, now + MAX_FUTURE_SECS), now).is_ok());
        let e =
            regtest.check_time(5, &header(prev, REGTEST_BITS, now + MAX_FUTURE_SECS + 1), now).unwrap_err();
        assert!(e.contains("future"), "{e}");
    }
}
