"""Building blocks that plug into backbones: MSConv (``msconv``) and its baselines SKConv, SE and
CBAM (``attention``). They are imported by their registry entries, not here, so importing this
package costs nothing."""
