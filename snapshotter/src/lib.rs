//! Layers and snapshots. Overlay snapshots (mounting) live in `overlay`.

pub mod overlay;
