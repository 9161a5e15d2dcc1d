use super::token_cipher::TokenCipher;
use super::{CryptoError, MasterKey, NONCE_LEN};
use crate::domain::{FieldKind, Plaintext, RecordId, TokenId};
use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, OsRng, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// The version of a data key. New records use the active (highest) version;
/// older versions stay readable until a rewrap has moved every record off them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyVersion(pub u32);

/// What a key is for. Each purpose has its own versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPurpose {
    /// AES-256-GCM data key (DEK) sealing records.
    Data,
    /// HMAC-SHA256 key of the blind index (value -> tokens).
    Index,
    /// AES-256 key of the token permutation (record id -> token). One
    /// version only, never rotated: rotating it would change every token.
    Token,
    /// HMAC-SHA256 key chaining the audit trail. One version only, never
    /// rotated: the trail's files verify under it for as long as they are
    /// kept.
    Audit,
}

impl KeyPurpose {
    /// The stable code stored with the key and bound into its wrapping AAD.
    pub fn code(self) -> u8 {
        match self {
            KeyPurpose::Data => 1,
            KeyPurpose::Index => 2,
            KeyPurpose::Token => 3,
            KeyPurpose::Audit => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        [
            KeyPurpose::Data,
            KeyPurpose::Index,
            KeyPurpose::Token,
            KeyPurpose::Audit,
        ]
        .into_iter()
        .find(|p| p.code() == code)
    }
}

/// A key as stored: sealed under the master key. Not secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub purpose: KeyPurpose,
    pub version: KeyVersion,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

/// The blind index of a canonical value: HMAC-SHA256 under index key
/// `version`. Equal values give equal indexes; the index reveals nothing
/// about the value without the key. Not secret, but not for logs either.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlindIndex {
    pub version: KeyVersion,
    pub mac: [u8; 32],
}

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlindIndex(v{}, <redacted>)", self.version.0)
    }
}

/// One encrypted value as stored. Not secret; useless without its record
/// id, kind and key version, which the associated data binds (with its
/// lifecycle facts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedRecord {
    pub kind: FieldKind,
    pub key_version: KeyVersion,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
    /// `None` for a record sealed before records carried these facts
    /// (created and expiry unknown: it never expires).
    pub meta: Option<RecordMeta>,
}

impl SealedRecord {
    /// When the record expires (`None`: never).
    pub fn expires_unix_ms(&self) -> Option<u64> {
        self.meta.and_then(|m| m.expires_unix_ms)
    }

    /// Whether the record has expired at `now_unix_ms`: from then on its
    /// token is answered as unknown, and the sweeper deletes it.
    pub fn is_expired(&self, now_unix_ms: u64) -> bool {
        self.expires_unix_ms().is_some_and(|at| at <= now_unix_ms)
    }
}

/// A record's lifecycle facts. Stored in the clear beside the ciphertext
/// (the store and the sweeper read them without keys) and bound into the
/// associated data, so an edited expiry, creation time or mode makes the
/// record fail to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub created_unix_ms: u64,
    /// `None`: never expires.
    pub expires_unix_ms: Option<u64>,
    /// The value's one deterministic token (else a random-mode token).
    pub deterministic: bool,
}

const WRAP_AAD_LABEL: &[u8] = b"fieldvault/wrapped-key/v1";
const RECORD_AAD_LABEL: &[u8] = b"fieldvault/record/v1";
const RECORD_AAD_LABEL_V2: &[u8] = b"fieldvault/record/v2";
const INDEX_LABEL: &[u8] = b"fieldvault/blind-index/v1";

fn wrap_aad(purpose: KeyPurpose, version: KeyVersion) -> Vec<u8> {
    let mut aad = WRAP_AAD_LABEL.to_vec();
    aad.push(purpose.code());
    aad.extend_from_slice(&version.0.to_be_bytes());
    aad
}

/// The record's id stands for its token: the token key maps one to the
/// other, one to one, and never changes.
/// A record with lifecycle facts binds them too (label v2): creation time,
/// expiry (0: never) and mode.
fn record_aad(
    id: RecordId,
    kind: FieldKind,
    version: KeyVersion,
    meta: Option<&RecordMeta>,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(RECORD_AAD_LABEL_V2.len() + 16 + 1 + 4 + 17);
    aad.extend_from_slice(match meta {
        Some(_) => RECORD_AAD_LABEL_V2,
        None => RECORD_AAD_LABEL,
    });
    aad.extend_from_slice(&id.seq.to_be_bytes());
    aad.extend_from_slice(&id.epoch.to_be_bytes());
    aad.push(kind.code());
    aad.extend_from_slice(&version.0.to_be_bytes());
    if let Some(m) = meta {
        aad.extend_from_slice(&m.created_unix_ms.to_be_bytes());
        aad.extend_from_slice(&m.expires_unix_ms.unwrap_or(0).to_be_bytes());
        aad.push(u8::from(m.deterministic));
    }
    aad
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

fn seal_with(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    msg: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    cipher
        .encrypt(Nonce::from_slice(nonce), Payload { msg, aad })
        .map_err(|_| CryptoError::Seal)
}

fn open_with(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ct: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Integrity)
}

/// The unwrapped keys: data keys as ready AES-256-GCM ciphers (building
/// the cipher costs more than sealing a short value, so it is cached per
/// version), blind-index HMAC keys and the token key, with the master key
/// that wraps them (to wrap new versions). Key material is wiped on drop.
///
/// A keyring never changes: rotation, retirement and a new master key
/// each make a new keyring ([`Keyring::with_new_key`],
/// [`Keyring::without`], [`Keyring::rewrapped`]) that replaces the old one
/// whole, so a call sees one consistent set of keys.
pub struct Keyring {
    kek: Aes256Gcm,
    master_fingerprint: [u8; 8],
    /// Every key, raw (to wrap again under a new master key).
    raw: BTreeMap<(KeyPurpose, KeyVersion), Zeroizing<[u8; 32]>>,
    active: KeyVersion,
    ciphers: BTreeMap<KeyVersion, Aes256Gcm>,
    index_active: KeyVersion,
    tokens: TokenCipher,
}

/// The token key's one version.
const TOKEN_KEY_VERSION: KeyVersion = KeyVersion(1);
/// The one version of a key that never rotates (the token and audit keys).
const SINGLE_VERSION: KeyVersion = KeyVersion(1);

fn random_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(key.as_mut());
    key
}

fn wrap(
    kek: &Aes256Gcm,
    purpose: KeyPurpose,
    version: KeyVersion,
    key: &[u8; 32],
) -> Result<WrappedKey, CryptoError> {
    let nonce = random_nonce();
    let ciphertext = seal_with(kek, &nonce, &wrap_aad(purpose, version), key)?;
    Ok(WrappedKey {
        purpose,
        version,
        nonce,
        ciphertext,
    })
}

/// Unwraps one stored key with `master` (the audit verifier's way to the
/// audit key without the store).
pub fn unwrap_one(
    master: &MasterKey,
    wrapped: &WrappedKey,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let kek = Aes256Gcm::new(master.bytes().into());
    let mut bytes = open_with(
        &kek,
        &wrapped.nonce,
        &wrap_aad(wrapped.purpose, wrapped.version),
        &wrapped.ciphertext,
    )
    .map_err(|_| CryptoError::Unwrap(wrapped.version.0))?;
    let key: Result<[u8; 32], _> = bytes.as_slice().try_into();
    bytes.zeroize();
    Ok(Zeroizing::new(
        key.map_err(|_| CryptoError::Unwrap(wrapped.version.0))?,
    ))
}

impl Keyring {
    /// A keyring with a fresh data key v1, index key v1 and token key, and
    /// the three keys wrapped for storage.
    pub fn create(master: &MasterKey) -> Result<(Self, Vec<WrappedKey>), CryptoError> {
        let version = KeyVersion(1);
        let mut raw = BTreeMap::new();
        raw.insert((KeyPurpose::Data, version), random_key());
        raw.insert((KeyPurpose::Index, version), random_key());
        raw.insert((KeyPurpose::Token, TOKEN_KEY_VERSION), random_key());
        let ring = Self::build(master, raw)?;
        let wrapped = ring.wrap_all()?;
        Ok((ring, wrapped))
    }

    /// Unwraps every stored key; the highest version of each purpose becomes
    /// active. Fails if any key does not unwrap (the wrong master key), a
    /// purpose has no key, or the token key is not exactly one version 1.
    pub fn unlock(master: &MasterKey, wrapped: &[WrappedKey]) -> Result<Self, CryptoError> {
        let kek = Aes256Gcm::new(master.bytes().into());
        let mut raw = BTreeMap::new();
        for w in wrapped {
            let mut bytes = open_with(
                &kek,
                &w.nonce,
                &wrap_aad(w.purpose, w.version),
                &w.ciphertext,
            )
            .map_err(|_| CryptoError::Unwrap(w.version.0))?;
            let key: Result<[u8; 32], _> = bytes.as_slice().try_into();
            bytes.zeroize();
            let key = Zeroizing::new(key.map_err(|_| CryptoError::Unwrap(w.version.0))?);
            if w.purpose == KeyPurpose::Token
                && (w.version != TOKEN_KEY_VERSION || raw.contains_key(&(w.purpose, w.version)))
            {
                return Err(CryptoError::TokenKey);
            }
            if w.purpose == KeyPurpose::Audit && w.version != SINGLE_VERSION {
                return Err(CryptoError::Unwrap(w.version.0));
            }
            raw.insert((w.purpose, w.version), key);
        }
        Self::build(master, raw)
    }

    /// A keyring over raw keys: the highest data and index versions are
    /// active.
    fn build(
        master: &MasterKey,
        raw: BTreeMap<(KeyPurpose, KeyVersion), Zeroizing<[u8; 32]>>,
    ) -> Result<Self, CryptoError> {
        Self::build_with(
            Aes256Gcm::new(master.bytes().into()),
            master.fingerprint(),
            raw,
        )
    }

    fn build_with(
        kek: Aes256Gcm,
        master_fingerprint: [u8; 8],
        raw: BTreeMap<(KeyPurpose, KeyVersion), Zeroizing<[u8; 32]>>,
    ) -> Result<Self, CryptoError> {
        let versions = |purpose| {
            raw.keys()
                .filter(move |(p, _)| *p == purpose)
                .map(|(_, v)| *v)
        };
        let active = versions(KeyPurpose::Data).max().ok_or(CryptoError::Empty)?;
        let index_active = versions(KeyPurpose::Index)
            .max()
            .ok_or(CryptoError::Empty)?;
        let ciphers = raw
            .iter()
            .filter(|((p, _), _)| *p == KeyPurpose::Data)
            .map(|((_, v), key)| (*v, Aes256Gcm::new(key.as_ref().into())))
            .collect();
        let tokens = match raw.get(&(KeyPurpose::Token, TOKEN_KEY_VERSION)) {
            Some(key) if versions(KeyPurpose::Token).count() == 1 => TokenCipher::new(key),
            _ => return Err(CryptoError::TokenKey),
        };
        Ok(Self {
            kek,
            master_fingerprint,
            raw,
            active,
            ciphers,
            index_active,
            tokens,
        })
    }

    /// Every key wrapped under this keyring's master key.
    fn wrap_all(&self) -> Result<Vec<WrappedKey>, CryptoError> {
        self.raw
            .iter()
            .map(|((purpose, version), key)| wrap(&self.kek, *purpose, *version, key))
            .collect()
    }

    /// The same keys under the same master key, with changes to the raw
    /// keys applied.
    fn derive(
        &self,
        change: impl FnOnce(&mut BTreeMap<(KeyPurpose, KeyVersion), Zeroizing<[u8; 32]>>),
    ) -> Result<Self, CryptoError> {
        let mut raw = self.raw.clone();
        change(&mut raw);
        Self::build_with(self.kek.clone(), self.master_fingerprint, raw)
    }

    /// This keyring plus a fresh `purpose` key at `version` (which becomes
    /// active), and that key wrapped for storage. Token keys never rotate.
    pub fn with_new_key(
        &self,
        purpose: KeyPurpose,
        version: KeyVersion,
    ) -> Result<(Self, WrappedKey), CryptoError> {
        if matches!(purpose, KeyPurpose::Token | KeyPurpose::Audit)
            || self.raw.contains_key(&(purpose, version))
        {
            return Err(CryptoError::Seal);
        }
        let key = random_key();
        let wrapped = wrap(&self.kek, purpose, version, &key)?;
        let ring = self.derive(|raw| {
            raw.insert((purpose, version), key);
        })?;
        Ok((ring, wrapped))
    }

    /// This keyring without one data or index version (never the last of
    /// its purpose).
    pub fn without(&self, purpose: KeyPurpose, version: KeyVersion) -> Result<Self, CryptoError> {
        self.derive(|raw| {
            raw.remove(&(purpose, version));
        })
    }

    /// The same keys under `new_master`, and every key wrapped under it.
    pub fn rewrapped(
        &self,
        new_master: &MasterKey,
    ) -> Result<(Self, Vec<WrappedKey>), CryptoError> {
        let ring = Self::build(new_master, self.raw.clone())?;
        let wrapped = ring.wrap_all()?;
        Ok((ring, wrapped))
    }

    /// The audit key, if the store holds one yet (stores made before the
    /// chained trail get one at their first start: [`Keyring::with_audit_key`]).
    pub fn audit_key(&self) -> Option<crate::audit::chain::AuditKey> {
        self.raw
            .get(&(KeyPurpose::Audit, SINGLE_VERSION))
            .map(|key| crate::audit::chain::AuditKey::new(**key))
    }

    /// This keyring plus a fresh audit key, and that key wrapped for
    /// storage; `None` when it has one already.
    pub fn with_audit_key(&self) -> Result<Option<(Self, WrappedKey)>, CryptoError> {
        if self.raw.contains_key(&(KeyPurpose::Audit, SINGLE_VERSION)) {
            return Ok(None);
        }
        let key = random_key();
        let wrapped = wrap(&self.kek, KeyPurpose::Audit, SINGLE_VERSION, &key)?;
        let ring = self.derive(|raw| {
            raw.insert((KeyPurpose::Audit, SINGLE_VERSION), key);
        })?;
        Ok(Some((ring, wrapped)))
    }

    /// The audit key wrapped under this keyring's master key (a fresh
    /// nonce each time), to keep beside the trail for `audit verify`.
    pub fn wrapped_audit_key(&self) -> Result<Option<WrappedKey>, CryptoError> {
        self.raw
            .get(&(KeyPurpose::Audit, SINGLE_VERSION))
            .map(|key| wrap(&self.kek, KeyPurpose::Audit, SINGLE_VERSION, key))
            .transpose()
    }

    /// The fingerprint of the master key that wraps this keyring's keys.
    pub fn master_fingerprint(&self) -> [u8; 8] {
        self.master_fingerprint
    }

    /// The versions this keyring holds for `purpose`, ascending.
    pub fn versions(&self, purpose: KeyPurpose) -> Vec<KeyVersion> {
        self.raw
            .keys()
            .filter(|(p, _)| *p == purpose)
            .map(|(_, v)| *v)
            .collect()
    }

    /// The active blind-index key version.
    pub fn active_index_version(&self) -> KeyVersion {
        self.index_active
    }

    /// The blind index of a canonical value of `kind` under the active
    /// index key. The kind is part of the input, so one string stored as
    /// two kinds gives two indexes.
    pub fn blind_index(
        &self,
        kind: FieldKind,
        canonical: &Plaintext,
    ) -> Result<BlindIndex, CryptoError> {
        self.blind_index_under(self.index_active, kind, canonical)
    }

    /// The blind index of a canonical value under index key `version` (an
    /// older one during an index rebuild).
    pub fn blind_index_under(
        &self,
        version: KeyVersion,
        kind: FieldKind,
        canonical: &Plaintext,
    ) -> Result<BlindIndex, CryptoError> {
        let key = self
            .raw
            .get(&(KeyPurpose::Index, version))
            .ok_or(CryptoError::UnknownKeyVersion(version.0))?;
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).map_err(|_| CryptoError::Seal)?;
        mac.update(INDEX_LABEL);
        mac.update(&[kind.code()]);
        mac.update(canonical.expose().as_bytes());
        Ok(BlindIndex {
            version,
            mac: mac.finalize().into_bytes().into(),
        })
    }

    pub fn active_version(&self) -> KeyVersion {
        self.active
    }

    /// The token of record `id`.
    pub fn token_of(&self, id: RecordId) -> TokenId {
        TokenId::from_bytes(self.tokens.block_of(id.epoch, id.seq))
    }

    /// The record id inside `token`, or `None` when its version byte shows
    /// the token key did not make it. A token it did not make (guessed,
    /// garbled, or issued by another vault) also carries an epoch the store
    /// never used, with near certainty: the caller checks that too, and
    /// then knows without a store read that such a token has no record.
    pub fn record_of(&self, token: &TokenId) -> Option<RecordId> {
        self.tokens
            .open(token.as_bytes())
            .map(|(epoch, seq)| RecordId { seq, epoch })
    }

    /// Seals a canonical value for record `id` under the active data key,
    /// with its lifecycle facts.
    pub fn seal(
        &self,
        id: RecordId,
        kind: FieldKind,
        value: &Plaintext,
        meta: RecordMeta,
    ) -> Result<SealedRecord, CryptoError> {
        self.seal_as(id, kind, value, Some(meta))
    }

    fn seal_as(
        &self,
        id: RecordId,
        kind: FieldKind,
        value: &Plaintext,
        meta: Option<RecordMeta>,
    ) -> Result<SealedRecord, CryptoError> {
        let cipher = self
            .ciphers
            .get(&self.active)
            .ok_or(CryptoError::UnknownKeyVersion(self.active.0))?;
        let nonce = random_nonce();
        let aad = record_aad(id, kind, self.active, meta.as_ref());
        let ciphertext = seal_with(cipher, &nonce, &aad, value.expose().as_bytes())?;
        Ok(SealedRecord {
            kind,
            key_version: self.active,
            nonce,
            ciphertext,
            meta,
        })
    }

    /// The record opened and sealed again under the active data key (a
    /// rewrap), with the same lifecycle facts. The plaintext is wiped
    /// before this returns.
    pub fn reseal(&self, id: RecordId, record: &SealedRecord) -> Result<SealedRecord, CryptoError> {
        let value = self.open(id, record)?;
        self.seal_as(id, record.kind, &value, record.meta)
    }

    /// Opens the record stored as `id`. Any change to the ciphertext,
    /// nonce, kind, version or id makes this fail with `Integrity`.
    pub fn open(&self, id: RecordId, record: &SealedRecord) -> Result<Plaintext, CryptoError> {
        let cipher = self
            .ciphers
            .get(&record.key_version)
            .ok_or(CryptoError::UnknownKeyVersion(record.key_version.0))?;
        let aad = record_aad(id, record.kind, record.key_version, record.meta.as_ref());
        let bytes = open_with(cipher, &record.nonce, &aad, &record.ciphertext)?;
        String::from_utf8(bytes).map(Plaintext::new).map_err(|e| {
            e.into_bytes().zeroize();
            CryptoError::Integrity
        })
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("versions", &self.ciphers.keys().collect::<Vec<_>>())
            .field("index_active", &self.index_active)
            .field("index_versions", &self.versions(KeyPurpose::Index))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// AES-256-GCM test case 16 of McGrew & Viega, "The Galois/Counter Mode
    /// of Operation" (the NIST submission): 256-bit key, 96-bit IV, AAD.
    #[test]
    fn aes_256_gcm_matches_the_published_vector() {
        let key = h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
        let nonce: [u8; 12] = h("cafebabefacedbaddecaf888")
            .try_into()
            .unwrap_or_else(|_| panic!("iv"));
        let pt = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let expected = [
            h("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"),
            h("76fc6ece0f4e1768cddf8853bb2d551b"),
        ]
        .concat();
        let cipher = Aes256Gcm::new(key.as_slice().into());
        let ct = seal_with(&cipher, &nonce, &aad, &pt).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ct, expected);
        assert_eq!(open_with(&cipher, &nonce, &aad, &ct), Ok(pt));
    }

    fn sample() -> (MasterKey, Keyring, Vec<WrappedKey>) {
        let master = MasterKey::generate();
        let (ring, wrapped) = Keyring::create(&master).unwrap_or_else(|e| panic!("{e}"));
        (master, ring, wrapped)
    }

    fn value() -> Plaintext {
        Plaintext::new("+12025550142".to_owned())
    }

    const META: RecordMeta = RecordMeta {
        created_unix_ms: 1_700_000_000_000,
        expires_unix_ms: Some(1_800_000_000_000),
        deterministic: false,
    };

    #[test]
    fn a_record_is_bound_to_its_lifecycle_facts() {
        let (_, ring, _) = sample();
        let id = RecordId::new(41, 9);
        let rec = ring
            .seal(id, FieldKind::Phone, &value(), META)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rec.meta, Some(META));
        assert_eq!(ring.open(id, &rec), Ok(value()));
        for edited in [
            RecordMeta {
                expires_unix_ms: Some(1_900_000_000_000),
                ..META
            },
            RecordMeta {
                expires_unix_ms: None,
                ..META
            },
            RecordMeta {
                created_unix_ms: 1,
                ..META
            },
            RecordMeta {
                deterministic: true,
                ..META
            },
        ] {
            let tampered = SealedRecord {
                meta: Some(edited),
                ..rec.clone()
            };
            assert_eq!(ring.open(id, &tampered), Err(CryptoError::Integrity));
        }
        // Nor can the facts be dropped to pass for an older record.
        let stripped = SealedRecord {
            meta: None,
            ..rec.clone()
        };
        assert_eq!(ring.open(id, &stripped), Err(CryptoError::Integrity));
        assert!(rec.is_expired(1_800_000_000_000) && !rec.is_expired(1_799_999_999_999));
    }

    #[test]
    fn a_record_sealed_before_records_carried_facts_opens_and_keeps_none_through_a_reseal() {
        let (_, ring, _) = sample();
        let id = RecordId::new(7, 3);
        let old = ring
            .seal_as(id, FieldKind::Phone, &value(), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ring.open(id, &old), Ok(value()));
        assert!(!old.is_expired(u64::MAX));
        let resealed = ring.reseal(id, &old).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resealed.meta, None);
        assert_eq!(ring.open(id, &resealed), Ok(value()));
        let new = ring
            .seal(id, FieldKind::Phone, &value(), META)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ring.reseal(id, &new).map(|r| r.meta), Ok(Some(META)));
    }

    #[test]
    fn a_sealed_record_opens_after_unlock_with_the_same_master_key() {
        let (master, ring, wrapped) = sample();
        let token = RecordId::new(41, 9);
        let rec = ring
            .seal(token, FieldKind::Phone, &value(), META)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!rec.ciphertext.windows(4).any(|w| w == b"5550"));
        let reopened = Keyring::unlock(&master, &wrapped).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reopened.open(token, &rec), Ok(value()));
    }

    #[test]
    fn the_wrong_master_key_cannot_unlock_the_keyring() {
        let (_, _, wrapped) = sample();
        let other = MasterKey::generate();
        assert_eq!(
            Keyring::unlock(&other, &wrapped).err(),
            Some(CryptoError::Unwrap(1))
        );
    }

    #[test]
    fn the_token_key_survives_unlock_and_maps_record_ids_both_ways() {
        let (master, ring, wrapped) = sample();
        let reopened = Keyring::unlock(&master, &wrapped).unwrap_or_else(|e| panic!("{e}"));
        for id in [0u64, 1, 2, 1 << 40, u64::MAX].map(|seq| RecordId::new(seq, 5)) {
            let token = ring.token_of(id);
            assert_eq!(reopened.token_of(id), token, "the token key is stored");
            assert_eq!(reopened.record_of(&token), Some(id));
        }
        let (_, other, _) = sample();
        assert_ne!(
            other.record_of(&ring.token_of(RecordId::new(7, 9))),
            Some(RecordId::new(7, 9))
        );
    }

    #[test]
    fn keys_without_exactly_one_token_key_do_not_unlock() {
        let (master, _, wrapped) = sample();
        let without: Vec<WrappedKey> = wrapped
            .iter()
            .filter(|w| w.purpose != KeyPurpose::Token)
            .cloned()
            .collect();
        assert_eq!(
            Keyring::unlock(&master, &without).err(),
            Some(CryptoError::TokenKey)
        );
        let kek = Aes256Gcm::new(master.bytes().into());
        let mut twice = wrapped.clone();
        twice.push(
            wrap(&kek, KeyPurpose::Token, KeyVersion(2), &[9; 32])
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(
            Keyring::unlock(&master, &twice).err(),
            Some(CryptoError::TokenKey)
        );
    }

    #[test]
    fn the_wrong_data_key_cannot_open_a_record() {
        let (_, ring, _) = sample();
        let (_, other_ring, _) = sample();
        let token = RecordId::new(41, 9);
        let rec = ring
            .seal(token, FieldKind::Phone, &value(), META)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other_ring.open(token, &rec), Err(CryptoError::Integrity));
    }

    #[test]
    fn a_record_is_bound_to_its_record_id_kind_version_and_bytes() {
        let (_, ring, _) = sample();
        let token = RecordId::new(41, 9);
        let rec = ring
            .seal(token, FieldKind::Phone, &value(), META)
            .unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(
            ring.open(RecordId::new(42, 9), &rec),
            Err(CryptoError::Integrity)
        );
        assert_eq!(
            ring.open(RecordId::new(41, 10), &rec),
            Err(CryptoError::Integrity),
            "the same sequence number under another epoch"
        );
        let relabelled = SealedRecord {
            kind: FieldKind::NationalId,
            ..rec.clone()
        };
        assert_eq!(ring.open(token, &relabelled), Err(CryptoError::Integrity));
        let other_version = SealedRecord {
            key_version: KeyVersion(2),
            ..rec.clone()
        };
        assert_eq!(
            ring.open(token, &other_version),
            Err(CryptoError::UnknownKeyVersion(2))
        );
        for i in 0..rec.ciphertext.len() {
            let mut flipped = rec.clone();
            flipped.ciphertext[i] ^= 0x01;
            assert_eq!(
                ring.open(token, &flipped),
                Err(CryptoError::Integrity),
                "byte {i}"
            );
        }
        let mut nonce = rec.clone();
        nonce.nonce[0] ^= 0x80;
        assert_eq!(ring.open(token, &nonce), Err(CryptoError::Integrity));
    }

    #[test]
    fn the_blind_index_is_deterministic_keyed_and_kind_bound() {
        let (master, ring, wrapped) = sample();
        let v = value();
        let a = ring
            .blind_index(FieldKind::Phone, &v)
            .unwrap_or_else(|e| panic!("{e}"));
        let reopened = Keyring::unlock(&master, &wrapped).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reopened.blind_index(FieldKind::Phone, &v), Ok(a));
        assert_ne!(
            ring.blind_index(FieldKind::NationalId, &v).map(|i| i.mac),
            Ok(a.mac)
        );
        let (_, other, _) = sample();
        assert_ne!(
            other.blind_index(FieldKind::Phone, &v).map(|i| i.mac),
            Ok(a.mac)
        );
        assert_eq!(format!("{a:?}"), "BlindIndex(v1, <redacted>)");
    }

    proptest::proptest! {
        /// Deterministic tokens come from the blind index of the canonical
        /// value: format variants of one number must index identically.
        #[test]
        fn format_variants_of_one_number_have_one_blind_index(
            sep in proptest::sample::select(vec!["", " ", "-", "."]),
            prefix in proptest::sample::select(vec!["+86 ", "0086", "+86", ""]),
        ) {
            use crate::domain::value::{canonicalise, FieldInput, PhoneRegion};
            let (_, ring, _) = sample();
            let index_of = |raw: &str| {
                let canonical = canonicalise(&FieldInput::simple(FieldKind::Phone, raw), PhoneRegion::parse("CN").ok())
                    .unwrap_or_else(|e| panic!("{e}"));
                ring.blind_index(FieldKind::Phone, &canonical).unwrap_or_else(|e| panic!("{e}"))
            };
            let variant = format!("{prefix}138{sep}1234{sep}5678");
            proptest::prop_assert_eq!(index_of(&variant), index_of("+8613812345678"));
        }
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let (_, ring, _) = sample();
        let token = RecordId::new(41, 9);
        let a = ring
            .seal(token, FieldKind::Phone, &value(), META)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = ring
            .seal(token, FieldKind::Phone, &value(), META)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }
}
