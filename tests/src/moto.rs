//! Connection facts for the moto server that scripts/test starts.
