//! Grants, through the vault.
