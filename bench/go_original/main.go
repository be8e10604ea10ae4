// Command go_original is the Go original's design as a benchmark competitor, written
// from its package document (servertracker v0.28.0, kept in the shared seed as
// servertracker-go-doc.txt) and issue 13's description of the run that measured it:
//
//   - a singleton Tracker, created on first use with a fresh random salt and its boot
//     time, holding salted hashes of the values it saw, never the values, in memory
//     under a mutex;
//   - RecordServer(connIP, senderDomain): the connection IP and the sender's domain
//     part (a domain, or an IP server: user@[1.2.3.4] or user@1.2.3.4), each stored as
//     a salted hash; empty values are ignored;
//   - the Status {boot_time, unique_conn_ips, unique_domains, unique_ip_servers}
//     written as JSON to server_tracker.json in the runtime directory on every record
//     ("JSON file rewritten per record"), under the mutex;
//   - 8 goroutines, each recording its share: they share the one Tracker in one
//     process, with no IPC, as the original's SMTP sessions do.
//
// It reads every record before the timing starts (one "connIP\tsender" line each,
// worker w's share the w-th contiguous run of lines, as bench/workload.py's
// make_shares), times from the first record to the last, and prints one JSON line:
// the counts, the seconds and the process's CPU seconds over that span, which
// bench/go_original.py checks against the true counts.
//
// The salted hash is SHA-256 over salt || value: the document says "salted hashing"
// (a salt, not a keyed MAC), SHA-256 is the standard library's plain choice for it
// (BLAKE2 is not in the standard library, and HMAC would be a keyed MAC), and its
// 32-byte sum is a map key as it is.
package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Status is the JSON structure written to the status file (the document's, as it is).
type Status struct {
	BootTime        int64 `json:"boot_time"`
	UniqueConnIPs   int   `json:"unique_conn_ips"`
	UniqueDomains   int   `json:"unique_domains"`
	UniqueIPServers int   `json:"unique_ip_servers"`
}

// StatusFile is the status file's name in the runtime directory.
const StatusFile = "server_tracker.json"

// Tracker holds salted hashes of unique server identifiers.
type Tracker struct {
	mu         sync.Mutex
	salt       string
	bootTime   int64
	connIPs    map[[32]byte]struct{}
	domains    map[[32]byte]struct{}
	ipServers  map[[32]byte]struct{}
	statusPath string
	// writes says whether RecordServer rewrites the status file (the design: true;
	// false only to measure what the design costs without its file).
	writes bool
}

var (
	global     *Tracker
	globalOnce sync.Once
	// runtimeDirectory is where the singleton writes its status file.
	runtimeDirectory string
	writeStatus      = true
)

// Global returns the singleton tracker, created on first call with a fresh random
// salt; boot time is recorded at creation.
func Global() *Tracker {
	globalOnce.Do(func() {
		salt := make([]byte, 32)
		if _, err := rand.Read(salt); err != nil {
			panic(err)
		}
		global = &Tracker{
			salt:       string(salt),
			bootTime:   time.Now().Unix(),
			connIPs:    make(map[[32]byte]struct{}),
			domains:    make(map[[32]byte]struct{}),
			ipServers:  make(map[[32]byte]struct{}),
			statusPath: filepath.Join(runtimeDirectory, StatusFile),
			writes:     writeStatus,
		}
	})
	return global
}

func (t *Tracker) hash(value string) [32]byte {
	return sha256.Sum256([]byte(t.salt + value))
}

// RecordServer records a connecting server IP and the sender's domain/IP, both as
// salted hashes; empty values are ignored. The hashes are taken before the mutex (the
// more generous reading of the document: the lock holds only the maps and the file).
func (t *Tracker) RecordServer(connIP, senderDomain string) {
	var ipHash, senderHash [32]byte
	if connIP != "" {
		ipHash = t.hash(connIP)
	}
	category, key := classify(senderDomain)
	if category != none {
		senderHash = t.hash(key)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if connIP != "" {
		t.connIPs[ipHash] = struct{}{}
	}
	switch category {
	case domain:
		t.domains[senderHash] = struct{}{}
	case ipServer:
		t.ipServers[senderHash] = struct{}{}
	}
	if t.writes {
		t.writeStatus()
	}
}

// GetStatus returns the current counts.
func (t *Tracker) GetStatus() Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.status()
}

func (t *Tracker) status() Status {
	return Status{t.bootTime, len(t.connIPs), len(t.domains), len(t.ipServers)}
}

// writeStatus rewrites the status file, as plainly as the document implies (it says
// nothing of a temporary file and a rename); the caller holds the mutex.
func (t *Tracker) writeStatus() {
	data, err := json.Marshal(t.status())
	if err == nil {
		err = os.WriteFile(t.statusPath, data, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "status file:", err)
		os.Exit(1)
	}
}

type category int

const (
	none category = iota
	domain
	ipServer
)

// classify gives a sender's category and the key its hash is taken of. The document
// says what the categories are (user@example.com: domain example.com; user@[1.2.3.4]
// or user@1.2.3.4: an IP server); the workload passes whole MAIL FROM addresses too
// (<user@domain>, user@domain, <>), and counts a domain in any case and with one
// trailing dot as the same, so this takes the part after the last "@" inside any
// angle brackets, lowercases a domain and strips one trailing dot. Nothing else (no
// IDNA, no validation of a domain).
func classify(sender string) (category, string) {
	s := sender
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		s = s[1 : len(s)-1]
	}
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		s = s[at+1:]
	}
	if s == "" {
		return none, ""
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		inner := s[1 : len(s)-1]
		if len(inner) > 5 && strings.EqualFold(inner[:5], "IPv6:") {
			inner = inner[5:]
		}
		if ip, err := netip.ParseAddr(inner); err == nil {
			return ipServer, ip.String()
		}
		return none, ""
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		return ipServer, ip.String()
	}
	return domain, strings.ToLower(strings.TrimSuffix(s, "."))
}

type record struct{ connIP, sender string }

// readShares reads the records file: one "connIP\tsender" line a record, split into
// `workers` equal contiguous shares.
func readShares(path string, workers int) ([][]record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	text := string(data)
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if text == "" || len(lines)%workers != 0 {
		return nil, fmt.Errorf("%d records do not split into %d equal shares", len(lines), workers)
	}
	per := len(lines) / workers
	shares := make([][]record, workers)
	for w := range shares {
		shares[w] = make([]record, per)
		for i, line := range lines[w*per : (w+1)*per] {
			ip, sender, ok := strings.Cut(line, "\t")
			if !ok {
				return nil, fmt.Errorf("record %d has no tab", w*per+i+1)
			}
			shares[w][i] = record{ip, sender}
		}
	}
	return shares, nil
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		panic(err)
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

// Result is the line printed at the end.
type Result struct {
	Records    int     `json:"records"`
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpu_seconds"`
	Status
}

func main() {
	records := flag.String("records", "", "the records file: one \"connIP\\tsender\" line each")
	workers := flag.Int("workers", 8, "goroutines, each recording its contiguous share")
	flag.StringVar(&runtimeDirectory, "runtime-dir", "", "where server_tracker.json is written")
	flag.BoolVar(&writeStatus, "write-per-record", true,
		"rewrite the status file on every record, as the design does (false: once at the end, "+
			"to measure the design without its file)")
	flag.Parse()
	if *records == "" || runtimeDirectory == "" || *workers < 1 || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	shares, err := readShares(*records, *workers)
	if err != nil {
		fmt.Fprintln(os.Stderr, "records:", err)
		os.Exit(1)
	}
	tracker := Global()

	var wg sync.WaitGroup
	cpuBefore := cpuSeconds()
	start := time.Now()
	for _, share := range shares {
		wg.Add(1)
		go func(share []record) {
			defer wg.Done()
			for _, r := range share {
				tracker.RecordServer(r.connIP, r.sender)
			}
		}(share)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	cpu := cpuSeconds() - cpuBefore
	if !tracker.writes {
		tracker.mu.Lock()
		tracker.writeStatus()
		tracker.mu.Unlock()
	}

	total := 0
	for _, share := range shares {
		total += len(share)
	}
	var out bytes.Buffer
	if err := json.NewEncoder(&out).Encode(Result{total, elapsed, cpu, tracker.GetStatus()}); err != nil {
		panic(err)
	}
	os.Stdout.Write(out.Bytes())
}
