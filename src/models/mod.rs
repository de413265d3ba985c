//! Model families (one file each) and the layers they share.

pub mod gpt;
pub mod layers;
