//! Analyses of the paper: WordNet C matrix, neuron mining, LC/CS1/CS2, r1/r2, detection + ROC,
//! prediction difference. See DESIGN.md section 4.
pub mod roc;
