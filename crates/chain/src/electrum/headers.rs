//! What a light client can check of the headers an Electrum server sends.
//!
//! A header's merkle root is what proves a transaction into a block, so a server that could
//! invent headers could "prove" any confirmation (of a cancel that never happened, say), or
//! run the clock of governance delays and approvals forward. The backend therefore keeps the
//! server's whole chain of headers as a [`HeaderChain`], from a block every client trusts (an
//! [`Anchor`]: one of the snapshot blocks Bitcoin Core ships, or genesis on regtest) to the
//! tip, and checks each header as Bitcoin Core would, as far as headers alone allow:
//! - **linked**: it names the header before it, so it sits on the anchored chain;
//! - **its own work**: its hash meets the target its bits encode, within the network's limit;
//! - **the difficulty its height requires**: on mainnet and signet each 2,016-block period
//!   keeps its bits, and the next period's follow from them and the time the period took; on
//!   regtest the difficulty is fixed; testnets allow minimum-difficulty blocks whenever blocks
//!   are slow, so there only a header's own work is checked;
//! - **a time not beyond two hours ahead**;
//! - and a reorganisation is followed only onto a branch with at least the work it replaces.
//!
//! So every header a server wants believed costs it a block of real work at the network's
//! difficulty (low on the test networks: testnets' minimum, signet's own, whose block
//! signatures headers do not show); it can still hide transactions, which towers on
//! independent backends cover.

use bitcoin::block::Header;
use bitcoin::params::Params;
use bitcoin::pow::{CompactTarget, Work};
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

    /// Whether each period's difficulty follows from the previous one (mainnet, signet).
    pub fn retargets(&self) -> bool {
        !self.params.no_pow_retargeting && !self.params.allow_min_difficulty_blocks
    }

    /// The header's bits are those its height requires: on a retargeting network `period_bits`
    /// (from the header before it, see [`HeaderChain`]), on regtest its fixed minimum
    /// difficulty; on testnets anything its own work meets.
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

/// A block every light client of a network may trust without checking: Bitcoin Core's own
/// snapshot heights (its `m_assumeutxo_data`), which it ships as part of its source. Headers
/// are verified from the start of the anchor's difficulty period on, linked one to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// Its height.
    pub height: u32,
    /// Its hash.
    pub hash: BlockHash,
}

impl Anchor {
    /// The anchor of `network`: a recent block of Core's, or the genesis block on regtest and
    /// signet (custom signets share the default one's genesis, not its blocks).
    pub fn of(network: Network) -> Anchor {
        let at = |height, hash: &str| Anchor { height, hash: hash.parse().expect("a block hash") };
        match network {
            Network::Bitcoin => {
                at(935_000, "0000000000000000000147034958af1652b2b91bba607beacc5e72a56f0fb5ee")
            }
            Network::Testnet => {
                at(4_840_000, "00000000000000f4971a7fb37fbdff89315b69a2e1920c467654a382f0d64786")
            }
            Network::Testnet4 => {
                at(120_000, "000000000bd2317e51b3c5794981c35ba894ce27d3e772d5c39ecd9cbce01dc8")
            }
            _ => Anchor { height: 0, hash: bitcoin::constants::genesis_block(network).block_hash() },
        }
    }

    /// The first height of the anchor's difficulty period, where verification starts.
    pub fn period_start(&self) -> u32 {
        self.height - self.height % DIFFICULTY_PERIOD
    }
}

/// The server's chain of headers from an [`Anchor`]'s period to its tip, each linked to the
/// one before, not timed in the future, carrying its own work at the
/// difficulty the network's rules give its height. A server that wants a header of its own
/// in it must mine that header at the network's difficulty.
#[derive(Debug, Clone)]
pub struct HeaderChain {
    rules: HeaderRules,
    /// The height of `headers[0]`, the anchor's period start.
    base: u32,
    headers: Vec<(BlockHash, Header)>,
}

impl HeaderChain {
    /// The chain from `anchor`'s period start, given `headers` from that height on through at
    /// least the anchor's: they must link up to the anchor's hash, so each is the real one.
    pub fn from_anchor(
        rules: HeaderRules,
        anchor: Anchor,
        headers: &[Header],
    ) -> Result<HeaderChain, String> {
        let base = anchor.period_start();
        let upto = (anchor.height - base) as usize;
        let Some(anchored) = headers.get(..=upto) else {
            return Err(format!("the headers from {base} do not reach the anchor at {}", anchor.height));
        };
        let mut chain = HeaderChain { rules, base, headers: Vec::with_capacity(anchored.len()) };
        for (i, header) in anchored.iter().enumerate() {
            let hash = header.block_hash();
            if let Some((prev, _)) = chain.headers.last() {
                if header.prev_blockhash != *prev {
                    return Err(format!(
                        "the header at height {} does not follow the one before",
                        base + i as u32
                    ));
                }
            }
            chain.headers.push((hash, *header));
        }
        if chain.headers.last().map(|(h, _)| *h) != Some(anchor.hash) {
            return Err(format!(
                "the server's block at height {} is not the anchor {}",
                anchor.height, anchor.hash
            ));
        }
        Ok(chain)
    }

    /// The lowest height known (the anchor's period start).
    pub fn base(&self) -> u32 {
        self.base
    }

    /// The height of the newest header.
    pub fn tip(&self) -> u32 {
        self.base + self.headers.len() as u32 - 1
    }

    /// The hash at `height`, if the chain has it.
    pub fn hash(&self, height: u32) -> Option<BlockHash> {
        self.entry(height).map(|(h, _)| *h)
    }

    /// The header at `height`, if the chain has it.
    pub fn header(&self, height: u32) -> Option<&Header> {
        self.entry(height).map(|(_, h)| h)
    }

    /// The height of the block `hash`, if it is on the chain (searched from the tip: the
    /// blocks asked for are recent ones).
    pub fn height_of(&self, hash: &BlockHash) -> Option<u32> {
        self.headers.iter().rposition(|(h, _)| h == hash).map(|i| self.base + i as u32)
    }

    fn entry(&self, height: u32) -> Option<&(BlockHash, Header)> {
        self.headers.get(height.checked_sub(self.base)? as usize)
    }

    /// Adds `headers`, from height `start` up to the base: they must link up to the base's
    /// header, which makes each of them the real one (no difficulty to check).
    pub fn prepend(&mut self, start: u32, headers: &[Header]) -> Result<(), String> {
        if headers.len() as u32 != self.base.saturating_sub(start) {
            return Err(format!("the headers from {start} do not reach the verified ones at {}", self.base));
        }
        let mut next = self.headers[0].1.prev_blockhash;
        for (i, header) in headers.iter().enumerate().rev() {
            if header.block_hash() != next {
                return Err(format!(
                    "the header at height {} is not the one the chain names",
                    start + i as u32
                ));
            }
            next = header.prev_blockhash;
        }
        let below = headers.iter().map(|h| (h.block_hash(), *h));
        self.headers.splice(0..0, below);
        self.base = start;
        Ok(())
    }

    /// Adds the server's `headers` from height `start` on. The first must follow the chain's
    /// header at `start - 1`; where they differ from headers already known, the server's
    /// chain reorganised, and its branch replaces the known one if it carries at least as
    /// much work. Nothing changes unless every header checks. `now` is Unix time.
    pub fn extend(&mut self, start: u32, headers: &[Header], now: u32) -> Result<(), String> {
        if start <= self.base || start > self.tip() + 1 {
            return Err(format!(
                "headers from height {start} cannot extend the chain from {} to {}",
                self.base,
                self.tip()
            ));
        }
        // Skip what is already known; the first header that differs starts the fork.
        let same = headers
            .iter()
            .enumerate()
            .take_while(|(i, h)| self.hash(start + *i as u32) == Some(h.block_hash()))
            .count();
        let (fork, branch) = (start + same as u32, &headers[same..]);
        if branch.is_empty() {
            return Ok(());
        }
        let mut new: Vec<(BlockHash, Header)> = Vec::with_capacity(branch.len());
        for (i, header) in branch.iter().enumerate() {
            let height = fork + i as u32;
            let at = |h: u32| if h >= fork { new.get((h - fork) as usize) } else { self.entry(h) }.copied();
            self.check(height, header, now, &at)?;
            new.push((header.block_hash(), *header));
        }
        let known = &self.headers[(fork - self.base) as usize..];
        let work = |hs: &[(BlockHash, Header)]| {
            hs.iter().map(|(_, h)| h.work()).fold(Work::from_be_bytes([0; 32]), |a, b| a + b)
        };
        if work(&new) < work(known) {
            return Err(format!(
                "the server's branch from height {fork} carries less work than the chain it would replace"
            ));
        }
        self.headers.truncate((fork - self.base) as usize);
        self.headers.extend(new);
        Ok(())
    }

    /// Checks `header` at `height`, with `at` giving the chain's headers below it.
    fn check(
        &self,
        height: u32,
        header: &Header,
        now: u32,
        at: &dyn Fn(u32) -> Option<(BlockHash, Header)>,
    ) -> Result<(), String> {
        let missing = |h: u32| format!("the header at height {h} is not known");
        let (prev_hash, prev) = at(height - 1).ok_or_else(|| missing(height - 1))?;
        if header.prev_blockhash != prev_hash {
            return Err(format!("the header at height {height} does not follow the one before"));
        }
        self.rules.check_work(height, header)?;
        self.rules.check_time(height, header, now)?;
        let period_bits = if !self.rules.retargets() {
            None
        } else if !height.is_multiple_of(DIFFICULTY_PERIOD) {
            Some(prev.bits)
        } else {
            let first = height - DIFFICULTY_PERIOD;
            let (_, first) = at(first).ok_or_else(|| missing(first))?;
            let timespan = u64::from(prev.time.saturating_sub(first.time));
            Some(CompactTarget::from_next_work_required(prev.bits, timespan, &self.rules.params))
        };
        self.rules.check_difficulty(height, header, period_bits)
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

    /// The header after `prev`, carrying `bits`, timed `time`, mined.
    pub(crate) fn next(prev: &Header, bits: u32, time: u32) -> Header {
        let mut h = header(prev.block_hash(), bits, time);
        while h.validate_pow(h.target()).is_err() {
            h.nonce += 1;
        }
        h
    }

    /// `first` and `count - 1` headers after it carrying `bits`, timed `time`.
    pub(crate) fn run(first: Header, count: usize, bits: u32, time: u32) -> Vec<Header> {
        let mut headers = vec![first];
        while headers.len() < count {
            headers.push(next(headers.last().unwrap(), bits, time));
        }
        headers
    }

    const NOW: u32 = 1_800_000_000;

    #[test]
    fn the_chain_starts_at_the_anchor_and_each_header_follows_the_one_before() {
        let rules = HeaderRules::new(Network::Bitcoin);
        let genesis = bitcoin::constants::genesis_block(Network::Bitcoin).header;
        let mut one = header(genesis.block_hash(), 0x1d00ffff, 1_231_469_665);
        one.merkle_root = "0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098".parse().unwrap();
        one.nonce = 2_573_394_689;
        let anchor = Anchor { height: 1, hash: one.block_hash() };
        let chain = HeaderChain::from_anchor(rules.clone(), anchor, &[genesis, one]).unwrap();
        assert_eq!((chain.base(), chain.tip(), chain.hash(1)), (0, 1, Some(anchor.hash)));
        // A server whose block at the anchor's height is another one is on another chain.
        let mut other = one;
        other.nonce += 1;
        let e = HeaderChain::from_anchor(rules.clone(), anchor, &[genesis, other]).unwrap_err();
        assert!(e.contains("not the anchor"), "{e}");
        let e = HeaderChain::from_anchor(rules.clone(), anchor, &[genesis]).unwrap_err();
        assert!(e.contains("do not reach the anchor"), "{e}");
        let e = HeaderChain::from_anchor(rules, anchor, &[one, one]).unwrap_err();
        assert!(e.contains("does not follow"), "{e}");
        // Each network's anchor is a block Bitcoin Core ships; regtest's is its genesis.
        for n in [Network::Bitcoin, Network::Testnet, Network::Testnet4] {
            let a = Anchor::of(n);
            assert!(a.height > 100_000 && a.period_start().is_multiple_of(DIFFICULTY_PERIOD), "{n}");
        }
        // Regtest's and signet's (custom signets share its genesis, not its blocks) is genesis.
        for n in [Network::Regtest, Network::Signet] {
            assert_eq!(
                Anchor::of(n),
                Anchor { height: 0, hash: bitcoin::constants::genesis_block(n).block_hash() }
            );
        }
    }

    #[test]
    fn headers_below_the_base_are_the_real_ones_when_they_link_up_to_it() {
        let headers = run(mined(REGTEST_BITS, 1_000), 2_020, REGTEST_BITS, 1_000);
        let anchor = Anchor { height: 2_018, hash: headers[2_018].block_hash() };
        let rules = HeaderRules::new(Network::Regtest);
        let mut chain = HeaderChain::from_anchor(rules, anchor, &headers[2_016..]).unwrap();
        assert_eq!((chain.base(), chain.tip()), (2_016, 2_018));
        let mut forged = headers[2_010..2_016].to_vec();
        forged[0].time += 1;
        let e = chain.prepend(2_010, &forged).unwrap_err();
        assert!(e.contains("height 2010 is not the one the chain names"), "{e}");
        assert!(chain.prepend(2_010, &headers[2_010..2_015]).is_err(), "short of the base");
        chain.prepend(2_010, &headers[2_010..2_016]).unwrap();
        assert_eq!((chain.base(), chain.hash(2_012)), (2_010, Some(headers[2_012].block_hash())));
        chain.extend(2_019, &headers[2_019..], NOW).unwrap();
        assert_eq!(chain.tip(), 2_019);
    }

    #[test]
    fn each_period_s_bits_follow_from_the_one_before() {
        let rules = easy();
        // Period 0 took a quarter of its target time: period 1 is four times harder.
        let mut period_0 = run(mined(EASY_BITS, 1_000), DIFFICULTY_PERIOD as usize - 1, EASY_BITS, 1_000);
        period_0.push(next(period_0.last().unwrap(), EASY_BITS, 1_000 + PERIOD_SECS / 4));
        let anchor = Anchor { height: 0, hash: period_0[0].block_hash() };
        let mut chain = HeaderChain::from_anchor(rules, anchor, &period_0[..1]).unwrap();
        chain.extend(1, &period_0[1..], NOW).unwrap();
        assert_eq!(chain.tip(), 2015);
        let last = *chain.header(2015).unwrap();
        // A header with period 0's easier bits, its own work fine: refused.
        let e = chain.clone().extend(2016, &[next(&last, EASY_BITS, 2_000)], NOW).unwrap_err();
        assert!(e.contains("require 0x1f1fffff"), "{e}");
        let harder = next(&last, 0x1f1fffff, 2_000);
        chain.extend(2016, &[harder], NOW).unwrap();
        // Within a period the bits stay.
        let e = chain.clone().extend(2017, &[next(&harder, EASY_BITS, 2_000)], NOW).unwrap_err();
        assert!(e.contains("require 0x1f1fffff"), "{e}");
        // Nor can a server pass off an easy header that does not follow the chain.
        let e = chain.clone().extend(2017, &[mined(EASY_BITS, 2_000)], NOW).unwrap_err();
        assert!(e.contains("does not follow"), "{e}");
        // A header without its own work, or from more than two hours ahead.
        let mut lazy = next(&harder, 0x1f1fffff, 2_000);
        lazy.nonce = lazy.nonce.wrapping_add(1);
        while lazy.validate_pow(lazy.target()).is_ok() {
            lazy.nonce = lazy.nonce.wrapping_add(1);
        }
        let e = chain.clone().extend(2017, &[lazy], NOW).unwrap_err();
        assert!(e.contains("proof of work"), "{e}");
        let future = next(&harder, 0x1f1fffff, NOW + MAX_FUTURE_SECS + 1);
        assert!(chain.clone().extend(2017, &[future], NOW).unwrap_err().contains("future"));
        assert_eq!(chain.tip(), 2016, "refused headers change nothing");
    }

    #[test]
    fn a_reorganisation_is_followed_onto_a_branch_with_as_much_work_and_nothing_else() {
        let rules = HeaderRules::new(Network::Regtest);
        let headers = run(mined(REGTEST_BITS, 1_000), 11, REGTEST_BITS, 1_000);
        let anchor = Anchor { height: 0, hash: headers[0].block_hash() };
        let mut chain = HeaderChain::from_anchor(rules, anchor, &headers[..1]).unwrap();
        chain.extend(1, &headers[1..], NOW).unwrap();
        assert_eq!(chain.tip(), 10);
        let tip = chain.hash(10);
        // Headers already known are skipped.
        chain.extend(5, &headers[5..], NOW).unwrap();
        assert_eq!((chain.tip(), chain.hash(10)), (10, tip));
        // A branch from height 8 with less work than the three blocks it would replace.
        let short = run(next(&headers[7], REGTEST_BITS, 1_001), 2, REGTEST_BITS, 1_001);
        let e = chain.extend(8, &short, NOW).unwrap_err();
        assert!(e.contains("less work"), "{e}");
        // One with as much, but a header in it without its work.
        let mut branch = run(next(&headers[7], REGTEST_BITS, 1_001), 3, REGTEST_BITS, 1_001);
        let mut bad = branch.clone();
        bad[2].bits = CompactTarget::from_consensus(0x1d00ffff);
        assert!(chain.extend(8, &bad, NOW).is_err());
        assert_eq!((chain.tip(), chain.hash(10)), (10, tip), "refused branches change nothing");
        chain.extend(8, &branch, NOW).unwrap();
        assert_eq!(chain.hash(10), Some(branch[2].block_hash()));
        assert_eq!(chain.height_of(&branch[1].block_hash()), Some(9));
        assert_eq!(chain.height_of(&headers[9].block_hash()), None, "the old branch is gone");
        // Nothing extends the chain from its base or beyond its tip.
        branch.push(next(&branch[2], REGTEST_BITS, 1_002));
        assert!(chain.extend(12, &branch[3..], NOW).is_err());
        assert!(chain.extend(0, &headers[..1], NOW).is_err());
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
