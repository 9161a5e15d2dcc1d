//! Tokens as a keyed permutation of a sequence number.
//!
//! A new record gets the next value of a 64-bit sequence; its token is one
//! AES-256 block encryption, under a dedicated token key, of a block that
//! holds a format version, the 56-bit epoch of the store process that
//! handed the number out, and the sequence number. The permutation makes
//! tokens unique by construction (distinct inputs, distinct blocks) and
//! shows nothing of the order, the value or the kind to anyone without the
//! token key.
//!
//! Decrypting a token and checking its version byte and its epoch (one the
//! store knows: a handful, one per process that ever wrote) rejects a
//! guessed or garbled token before any store read: a random block passes
//! with probability about 2^-64 per known epoch.
//!
//! The token key is generated once with the keyring, stored wrapped by the
//! master key, and never rotated (see `Keyring::token_of`).

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes256;

/// The format version in the first byte of every token block.
pub const TOKEN_BLOCK_VERSION: u8 = 1;

/// Length of a token block, one AES block.
pub const TOKEN_BLOCK_LEN: usize = 16;

/// Encrypts (epoch, sequence number) pairs into token blocks and back,
/// under the token key. The key schedule is wiped on drop (the `aes`
/// crate's `zeroize` feature).
pub struct TokenCipher {
    aes: Aes256,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCipher { .. }")
    }
}

impl TokenCipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            aes: Aes256::new(key.into()),
        }
    }

    /// The token block of sequence number `seq` handed out under `epoch`
    /// (below 2^56: its top byte is dropped).
    pub fn block_of(&self, epoch: u64, seq: u64) -> [u8; TOKEN_BLOCK_LEN] {
        let mut block = [0u8; TOKEN_BLOCK_LEN];
        block[..8].copy_from_slice(&epoch.to_be_bytes());
        block[0] = TOKEN_BLOCK_VERSION;
        block[8..].copy_from_slice(&seq.to_be_bytes());
        let mut b = block.into();
        self.aes.encrypt_block(&mut b);
        b.into()
    }

    /// The (epoch, sequence number) inside `block`, or `None` when its
    /// version byte is wrong. The caller also checks the epoch: only with
    /// it does a block this key never made fail with probability 1 - 2^-64.
    pub fn open(&self, block: &[u8; TOKEN_BLOCK_LEN]) -> Option<(u64, u64)> {
        let mut b = (*block).into();
        self.aes.decrypt_block(&mut b);
        let mut plain: [u8; TOKEN_BLOCK_LEN] = b.into();
        if plain[0] != TOKEN_BLOCK_VERSION {
            return None;
        }
        plain[0] = 0;
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&plain[..8]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&plain[8..]);
        Some((u64::from_be_bytes(epoch), u64::from_be_bytes(seq)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed key: the tests are deterministic.
    fn cipher() -> TokenCipher {
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        TokenCipher::new(&key)
    }

    const EPOCH: u64 = 0x00c0_ffee_1234_5678;

    #[test]
    fn a_token_block_decrypts_to_its_epoch_and_sequence_number() {
        let c = cipher();
        for seq in (0..10_000u64).chain([u64::MAX - 1, u64::MAX, 1 << 32, 1 << 63]) {
            for epoch in [0, 1, EPOCH, (1 << 56) - 1] {
                assert_eq!(c.open(&c.block_of(epoch, seq)), Some((epoch, seq)));
            }
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_token_block_is_rejected() {
        let c = cipher();
        for seq in [0u64, 1, 2, 1_000, 123_456_789, u64::MAX] {
            let block = c.block_of(EPOCH, seq);
            for bit in 0..TOKEN_BLOCK_LEN * 8 {
                let mut garbled = block;
                garbled[bit / 8] ^= 1 << (bit % 8);
                // Wrong version byte, or an epoch the store does not know.
                assert!(
                    c.open(&garbled).is_none_or(|(epoch, _)| epoch != EPOCH),
                    "seq {seq}, bit {bit}"
                );
            }
        }
    }

    #[test]
    fn a_token_block_of_another_token_key_is_rejected() {
        let other = TokenCipher::new(&[7u8; 32]);
        let c = cipher();
        for seq in 0..1_000u64 {
            assert!(c
                .open(&other.block_of(EPOCH, seq))
                .is_none_or(|(epoch, _)| epoch != EPOCH));
        }
    }

    #[test]
    fn one_sequence_number_under_two_epochs_gives_two_unrelated_tokens() {
        let c = cipher();
        let (a, b) = (c.block_of(EPOCH, 42), c.block_of(EPOCH + 1, 42));
        assert!(common_prefix_bits(&a, &b) < 40);
        assert_ne!(a, b);
    }

    /// Length, in bits, of the common prefix of two blocks.
    fn common_prefix_bits(a: &[u8; 16], b: &[u8; 16]) -> u32 {
        (u128::from_be_bytes(*a) ^ u128::from_be_bytes(*b)).leading_zeros()
    }

    #[test]
    fn consecutive_sequence_numbers_give_tokens_with_no_visible_order() {
        let c = cipher();
        let n = 100_000u64;
        let blocks: Vec<[u8; 16]> = (0..n).map(|s| c.block_of(EPOCH, s)).collect();
        // Neighbours in the sequence share no more prefix than random
        // blocks do: among 100k pairs the longest common prefix of random
        // 128-bit values is about log2(100k) ≈ 17 bits; 40 would be a
        // 2^-23 event per pair.
        let longest = blocks
            .windows(2)
            .map(|w| common_prefix_bits(&w[0], &w[1]))
            .max()
            .unwrap_or(0);
        assert!(longest < 40, "neighbours share a {longest}-bit prefix");
        // Sorted as tokens (byte order), the sequence numbers are not in
        // order: about half of the adjacent pairs ascend, as for a random
        // permutation (the standard deviation is about 0.16%).
        let mut order: Vec<(u128, u64)> = blocks
            .iter()
            .zip(0..n)
            .map(|(b, s)| (u128::from_be_bytes(*b), s))
            .collect();
        order.sort_unstable();
        let ascending = order.windows(2).filter(|w| w[0].1 < w[1].1).count();
        let share = ascending as f64 / (n - 1) as f64;
        assert!((0.48..0.52).contains(&share), "{share}");
        // And no two are equal (a permutation).
        order.dedup_by_key(|(b, _)| *b);
        assert_eq!(order.len() as u64, n);
    }
}
