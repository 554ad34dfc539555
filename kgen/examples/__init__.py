"""Worked examples shipped with kgen (a real trained model, converted and checked offline)."""
