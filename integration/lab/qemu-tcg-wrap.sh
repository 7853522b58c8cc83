#!/bin/bash
# ferry lab emulator wrapper: QEMU 7.2 under TCG loses dirty pages while it
# live-migrates a guest that writes memory (fixed upstream in QEMU 9.0,
# "physmem: Fix migration dirty bitmap coherency with TCG memory access").
# The broken fast path only runs for RAM blocks whose size is a multiple of
# 256 KiB, so under TCG this wrapper makes pc.ram 8 KiB larger: "-m" and the
# memory-backend-ram size both grow by 8 KiB (QEMU rounds -m to 8 KiB, so
# +4 KiB would not match). Source and destination run the same XML through
# the same wrapper, so both sides get the same sizes. A NUMA guest has one
# backend per node and no pc.ram; the first node's grows instead, so that the
# nodes still add up to -m. Without TCG it changes nothing.
qemu=${FERRY_LAB_QEMU:-/usr/bin/qemu-system-x86_64} # the override is for the wrapper's own test and the stack's shim
# Once only: where /usr/bin/qemu-system-x86_64 is itself a shim that runs this
# wrapper (integration/stack), the second pass must not grow the sizes again.
[ -n "$FERRY_LAB_TCG_FIXED" ] && exec "$qemu" "$@"
export FERRY_LAB_TCG_FIXED=1
tcg=0
prev=
for a in "$@"; do
	case "$prev:$a" in
	-accel:tcg*|-machine:*accel=tcg*) tcg=1 ;;
	esac
	prev=$a
done
[ "$tcg" = 1 ] || exec "$qemu" "$@"
args=()
prev=
for a in "$@"; do
	if [ "$prev" = "-m" ]; then
		case "$a" in
		size=*k*) k=${a#size=}; rest=${k#*k}; k=${k%%k*}; a="size=$((k + 8))k$rest" ;;
		*[!0-9]*) ;;
		*) a="$((a * 1024 + 8))k" ;;
		esac
	fi
	case "$a" in
	*'"qom-type":"memory-backend-ram"'*'"id":"pc.ram"'*|*'"qom-type":"memory-backend-ram"'*'"id":"ram-node0"'*)
		size=$(printf '%s' "$a" | sed -n 's/.*"size":\([0-9]*\).*/\1/p')
		[ -n "$size" ] && a=$(printf '%s' "$a" | sed "s/\"size\":$size/\"size\":$((size + 8192))/")
		;;
	esac
	args+=("$a")
	prev=$a
done
exec "$qemu" "${args[@]}"
