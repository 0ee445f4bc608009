# Sourced by the A/B benchmarks (alloc_overhead.sh, prof_overhead.sh).
#
# ab_rounds ROUNDS A B RUN: calls `RUN VARIANT ROUND` for both variants in each of ROUNDS rounds,
# the one that goes first alternating between rounds (ABBA): on a shared disk the second run of
# a round is usually the faster, and a fixed order would charge that to one variant.
ab_rounds() {
    local rounds=$1 a=$2 b=$3 run=$4 round variant
    local order
    for round in $(seq "$rounds"); do
        order=("$a" "$b")
        (( round % 2 == 0 )) && order=("$b" "$a")
        for variant in "${order[@]}"; do
            echo "round $round: $variant" >&2
            "$run" "$variant" "$round"
        done
    done
}
