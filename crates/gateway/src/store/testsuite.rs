//! The behaviour every [`Store`](super::Store) backend must have, as one suite of checks.
