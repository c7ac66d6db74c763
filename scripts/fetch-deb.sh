#!/usr/bin/env bash
# Unpacks Debian packages of another suite into a private directory, without installing them:
#   scripts/fetch-deb.sh <suite> <dest> <package>=<version> ...
# For tools whose Debian bookworm version is too old for what istio/ deploys (Webdis 0.1.22,
# which logs in to Redis as an ACL user and reads secrets from its environment; kustomize 5,
# which renders istio/'s overlays). Nothing in the system changes: the files land in <dest>
# and are run from there.
#
# Trust chain, as apt's: the suite's InRelease is checked with gpgv against the Debian archive
# keyring, the package index against InRelease's SHA-256, each .deb against the index's.
# The exact version is required: a suite that moved on fails here, loudly, instead of testing
# against something else.
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=$1 dest=$2
shift 2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

curl -fsS -m 60 -o "$work/InRelease" "$MIRROR/dists/$suite/InRelease"
# Only what the signature covers is read (--output): text around the signed part is not.
gpgv --keyring /usr/share/keyrings/debian-archive-keyring.gpg --output "$work/Release" \
  "$work/InRelease" 2>"$work/gpgv" || {
  cat "$work/gpgv" >&2
  echo "fetch-deb: $suite's InRelease is not signed by the Debian archive keyring" >&2
  exit 1
}
arch=$(dpkg --print-architecture)
index=main/binary-$arch/Packages.xz
want=$(awk -v f="$index" '/^SHA256:/{s=1; next} /^[A-Za-z]/{s=0} s && $3==f {print $1}' "$work/Release")
[ "$(printf '%s\n' "$want" | grep -c .)" = 1 ] || {
  echo "fetch-deb: not exactly one SHA-256 of $index in $suite's Release" >&2
  exit 1
}
curl -fsS -m 120 -o "$work/Packages.xz" "$MIRROR/dists/$suite/$index"
echo "$want  $work/Packages.xz" | sha256sum -c --strict --quiet -
xz -d "$work/Packages.xz"

mkdir -p "$dest"
for spec in "$@"; do
  pkg=${spec%%=*} version=${spec#*=}
  read -r file sum < <(awk -v p="$pkg" -v v="$version" '
    /^Package: /{name=$2} /^Version: /{ver=$2} /^Filename: /{file=$2} /^SHA256: /{sum=$2}
    /^$/{ if (name==p && ver==v) print file, sum; name=ver=file=sum="" }' "$work/Packages") || true
  if [ -z "${file:-}" ]; then
    have=$(awk -v p="$pkg" '/^Package: /{n=$2} /^Version: /{ if (n==p) print $2 }' "$work/Packages")
    echo "fetch-deb: $pkg $version is not in $suite (it has: ${have:-nothing})" >&2
    exit 1
  fi
  curl -fsS -m 300 -o "$work/p.deb" "$MIRROR/$file"
  echo "$sum  $work/p.deb" | sha256sum -c --strict --quiet -
  dpkg-deb -x "$work/p.deb" "$dest"
  echo "fetch-deb: $pkg $version from $suite into $dest"
done
