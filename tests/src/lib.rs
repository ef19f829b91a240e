//! Test harness shared by the integration tiers.
