//! memwatch
