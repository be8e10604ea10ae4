// The Go original's design, as bench.compare's "go" competitor (bench/go_original.py
// builds it). Standard library only: nothing is downloaded.
module servertracker/bench/go_original

go 1.19
