#!/usr/bin/env bash
# Makes sure a Vulkan driver is present for the wgpu runtime. On a machine without a GPU
# (CI, a laptop in a container) that is Mesa's lavapipe, a software Vulkan driver that runs
# the same CubeCL kernels on the CPU. Debian/Ubuntu only; idempotent.
set -euo pipefail

have_vulkan_icd() {
    ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json \
        >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'
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
