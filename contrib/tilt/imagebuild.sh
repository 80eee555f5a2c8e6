#!/usr/bin/env bash
# Build $EXPECTED_REF from a git or http(s) source with nothing but kubectl: creates an
# ImageBuild named after the image's tag, waits until it is Ready (exit 0), and fails at once
# when it stalls (exit 1, with the reason). For Tilt's custom_build (see README.md):
#
#   custom_build('example.com/app',
#                'contrib/tilt/imagebuild.sh --git https://git.example.com/app.git --ref main',
#                deps=[], disable_push=True, skips_local_docker=True)
#
# Usage: EXPECTED_REF=name:tag imagebuild.sh (--git URL [--ref REF] [--sub-path DIR] | --http URL)
#        [--dockerfile PATH] [--namespace NS] [--timeout 10m]
set -euo pipefail

die() { echo "imagebuild.sh: $*" >&2; exit 2; }

[[ -n "${EXPECTED_REF:-}" ]] || die "EXPECTED_REF is not set (Tilt sets it; or export it)"
source_yaml='' dockerfile='' namespace=() timeout=10m
while (($#)); do
  case $1 in
    --git) source_yaml="git: {url: \"$2\"}"; shift 2 ;;
    --ref) source_yaml=${source_yaml%\}}", ref: \"$2\"}"; shift 2 ;;
    --sub-path) source_yaml=${source_yaml%\}}", subPath: \"$2\"}"; shift 2 ;;
    --http) source_yaml="http: {url: \"$2\"}"; shift 2 ;;
    --dockerfile) dockerfile="  dockerfile: \"$2\""; shift 2 ;;
    --namespace | -n) namespace=(-n "$2"); shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ -n "$source_yaml" ]] || die "give --git URL or --http URL"

# One ImageBuild per image tag (Tilt's tags are content hashes), so no earlier build's
# conditions are ever read as this one's; finished ones delete themselves after an hour.
tag=${EXPECTED_REF##*:}
repo=${EXPECTED_REF%:*}
name=$(printf '%s-%s' "${repo##*/}" "$tag" | tr 'A-Z_.' 'a-z--' | tr -cd 'a-z0-9-' | cut -c1-63 | sed 's/-*$//')

kubectl "${namespace[@]}" apply -f - >/dev/null <<YAML
apiVersion: kiln.dev/v1alpha1
kind: ImageBuild
metadata:
  name: $name
spec:
  image: "$EXPECTED_REF"
  source: {$source_yaml}
$dockerfile
  backoffLimit: 0
  ttlSecondsAfterFinished: 3600
YAML

# Wait for Ready or Stalled, whichever comes first.
kubectl "${namespace[@]}" wait --for=condition=Ready --timeout="$timeout" "imagebuild/$name" >/dev/null 2>&1 &
ready=$!
kubectl "${namespace[@]}" wait --for=condition=Stalled --timeout="$timeout" "imagebuild/$name" >/dev/null 2>&1 &
stalled=$!
trap 'kill $ready $stalled 2>/dev/null || true' EXIT
while kill -0 "$ready" 2>/dev/null && kill -0 "$stalled" 2>/dev/null; do sleep 0.2; done
if ! kill -0 "$ready" 2>/dev/null && wait "$ready"; then
  echo "built $EXPECTED_REF ($(kubectl "${namespace[@]}" get imagebuild "$name" -o jsonpath='{.status.digest}'))" >&2
  exit 0
fi
reason=$(kubectl "${namespace[@]}" get imagebuild "$name" -o jsonpath='{.status.reason}: {.status.message}')
echo "imagebuild/$name failed: ${reason:-timed out after $timeout}" >&2
exit 1
