"""Old import path of `t2lcli.hw_profiles` (hardware profiles), kept for code outside the package."""

from t2lcli.hw_profiles import (
    ATTN,
    DEFAULT_PROFILE,
    DEVICES,
    DTYPES,
    KERNEL_POLICIES,
    QUANTIZATION,
    ComponentSettings,
    Profile,
    list_profiles,
    load_profile,
    parse_set_overrides,
    profiles_dir,
)

__all__ = ["ATTN", "DEFAULT_PROFILE", "DEVICES", "DTYPES", "KERNEL_POLICIES", "QUANTIZATION", "ComponentSettings", "Profile", "list_profiles",
           "load_profile", "parse_set_overrides", "profiles_dir"]
