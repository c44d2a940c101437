#!/usr/bin/env bash
# Makes sure a Vulkan driver is present for the wgpu runtime. On a machine without a GPU
# (CI, a laptop in a container) that is Mesa's lavapipe, a software Vulkan driver that runs
# the same CubeCL kernels on the CPU. Debian/Ubuntu only; idempotent.
set -euo pipefail

have_vulkan_icd() {
    # Both the loader and at least one driver manifest. (No `grep -q` here: under pipefail
    # its early exit would fail the pipeline through SIGPIPE.)
    ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null || return 1
    local manifest
    for manifest in /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json \
        /usr/local/share/vulkan/icd.d/*.json; do
        [ -e "$manifest" ] && return 0
    done
    return 1
}

if have_vulkan_icd; then
    exit 0
fi

echo "setup: no Vulkan driver found; installing Mesa's lavapipe (mesa-vulkan-drivers)" >&2
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 >/dev/null
have_vulkan_icd || { echo "setup: a Vulkan driver is still missing after the install" >&2; exit 1; }
