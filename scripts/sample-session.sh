#!/usr/bin/env bash
# An ordinary client session against a running gateway: writes, a conflict, reads, a follower
# until the stream is sealed, the operator endpoints, bad input. Used to train the link order
# (scripts/hot-functions.sh) and to measure RSS after traffic (bench/idle_rss.sh).
#
# usage: scripts/sample-session.sh URL ADMIN_TOKEN    (needs curl)
set -euo pipefail
url=${1:?usage: $0 URL ADMIN_TOKEN}
token=${2:?usage: $0 URL ADMIN_TOKEN}
auth=(-H "Authorization: Bearer $token")
octets=(-H "Content-Type: application/offset+octet-stream")
stream=$url/v1/streams/acme/prod/app-$RANDOM$RANDOM
chunk=$(mktemp)
trap 'rm -f "$chunk"' EXIT
head -c 300000 /dev/urandom >"$chunk"

curl -s "$url/readyz" >/dev/null
curl -s "${auth[@]}" "$stream?offset=0&follow=true" --max-time 20 >/dev/null &
follower=$!
curl -s -X PATCH "${auth[@]}" "${octets[@]}" -H "Stream-Offset: 0" --data-binary @"$chunk" "$stream"
curl -s -X PATCH "${auth[@]}" "${octets[@]}" -H "Stream-Offset: 0" --data-binary x "$stream" >/dev/null
curl -s -X PATCH "${auth[@]}" "${octets[@]}" -H "Stream-Offset: 300000" -H "Stream-Seal: true" \
  --data-binary "last line" "$stream"
wait $follower || true
curl -s -I "${auth[@]}" "$stream" >/dev/null
curl -s "${auth[@]}" "$stream?offset=1000" >/dev/null
curl -s "${auth[@]}" "$url/v1/streams?prefix=acme/" >/dev/null
curl -s "${auth[@]}" "$url/metrics" >/dev/null
curl -s "${auth[@]}" "$url/debug/memory" >/dev/null
curl -s -H "Authorization: Bearer not-a-token" "$stream" >/dev/null
curl -s "${auth[@]}" "$url/v1/streams/bad%20id/x/y" >/dev/null
curl -s -X PATCH "${auth[@]}" -H "Stream-Offset: 0" --data-binary x "$url/v1/streams/acme/prod/other" >/dev/null
