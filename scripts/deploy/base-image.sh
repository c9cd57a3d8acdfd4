#!/usr/bin/env bash
# Makes debian:bookworm-slim available to podman: pulled when a registry serves it,
# otherwise built here with debootstrap (minbase) from the Debian mirror this machine's
# apt already uses, and imported. The mirror is read from the apt sources at run time so
# that no host name is written into the repository.
#   scripts/deploy/base-image.sh [IMAGE]
set -euo pipefail
image=${1:-debian:bookworm-slim}

if podman image exists "$image"; then
    exit 0
fi
if timeout 60 podman pull -q "$image" >/dev/null 2>&1; then
    exit 0
fi

# The Debian mirrors configured for apt, from deb822 (.sources) or one-line (.list) files.
mirrors_from_apt() {
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' "$file"
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$file" ] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "$file"
    done
}
mirror=$(mirrors_from_apt | grep -v -- '-security' | head -n 1 || true)
security=$(mirrors_from_apt | grep -- '-security' | head -n 1 || true)
security=${security:-${mirror%/}-security}
if [ -z "$mirror" ]; then
    echo "base-image: no Debian mirror found in /etc/apt/sources*; cannot build $image" >&2
    exit 1
fi

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/choreo-bookworm.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
echo "base-image: $image cannot be pulled; debootstrap bookworm (minbase) from the apt mirror" >&2
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 20 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    exit 1
}
rm -f "$rootfs.log"
# Like the official slim image: the same mirror for updates and security, no apt caches.
cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' - "$image" >/dev/null
echo "base-image: imported $image" >&2
