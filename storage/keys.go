package storage

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// Key space. Every key starts with one prefix byte, so each kind of record
// lives in its own contiguous range.
const (
	pfxMeta    = 'm' // m + name                      -> metaRec
	pfxDesc    = 'd' // d + stream + 0x00 + BE uint32 -> descRec
	pfxSample  = 's' // s + stream + 0x00 + BE time^signbit + BE seq -> sampleRec
	pfxEpisode = 'e' // e + episode id                -> episodeRec
	pfxUpload  = 'u' // u + episode id                -> uploadRec
	pfxSegment = 'g' // g + BE uint64 segment id      -> segRec
)

// sampleKeyLen is the length of a sample key for a stream name of n bytes.
func sampleKeyLen(n int) int { return 1 + n + 1 + 8 + 8 }

// appendStreamPrefix appends the prefix shared by every sample key of stream.
// The 0x00 terminator keeps "a" and "a/b" in disjoint ranges.
func appendStreamPrefix(dst []byte, stream string) []byte {
	dst = append(dst, pfxSample)
	dst = append(dst, stream...)
	return append(dst, 0)
}

// appendSampleKey appends the key of one sample: stream prefix, then
// big-endian time with the sign bit flipped (so negative times sort first),
// then big-endian seq. One stream's time range is one contiguous key range.
func appendSampleKey(dst []byte, stream string, t int64, seq uint64) []byte {
	dst = appendStreamPrefix(dst, stream)
	dst = binary.BigEndian.AppendUint64(dst, uint64(t)^(1<<63))
	return binary.BigEndian.AppendUint64(dst, seq)
}

// sampleRangeBounds returns [lower, upper) covering T in [from, to].
func sampleRangeBounds(stream string, from, to int64) (lower, upper []byte) {
	lower = appendSampleKey(nil, stream, from, 0)
	upper = appendSampleKey(nil, stream, to, ^uint64(0))
	upper = append(upper, 0) // exclusive bound just past (to, maxSeq)
	return lower, upper
}

// streamBounds returns [lower, upper) covering every sample of stream.
func streamBounds(stream string) (lower, upper []byte) {
	lower = appendStreamPrefix(nil, stream)
	upper = append([]byte{pfxSample}, stream...)
	upper = append(upper, 1)
	return lower, upper
}

// parseSampleKey splits a sample key.
func parseSampleKey(k []byte) (stream string, t int64, seq uint64, ok bool) {
	if len(k) < 1+1+16 || k[0] != pfxSample || k[len(k)-17] != 0 {
		return "", 0, 0, false
	}
	stream = string(k[1 : len(k)-17])
	t = int64(binary.BigEndian.Uint64(k[len(k)-16:]) ^ (1 << 63))
	seq = binary.BigEndian.Uint64(k[len(k)-8:])
	return stream, t, seq, true
}

func descKey(stream string, version uint32) []byte {
	k := append([]byte{pfxDesc}, stream...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, version)
}

func descBounds(stream string) (lower, upper []byte) {
	lower = append([]byte{pfxDesc}, stream...)
	lower = append(lower, 0)
	upper = append([]byte{pfxDesc}, stream...)
	upper = append(upper, 1)
	return lower, upper
}

func episodeKey(id string) []byte { return append([]byte{pfxEpisode}, id...) }
func uploadKey(id string) []byte  { return append([]byte{pfxUpload}, id...) }
func segKey(id uint64) []byte     { return binary.BigEndian.AppendUint64([]byte{pfxSegment}, id) }
func metaKey(name string) []byte  { return append([]byte{pfxMeta}, name...) }

// prefixBounds returns [lower, upper) of all keys starting with prefix byte p.
func prefixBounds(p byte) (lower, upper []byte) { return []byte{p}, []byte{p + 1} }

// describeKey renders a key for error messages: readable where possible,
// always with the raw bytes in hex.
func describeKey(k []byte) string {
	if stream, t, seq, ok := parseSampleKey(k); ok {
		return fmt.Sprintf("sample %s t=%d seq=%d (key %s)", stream, t, seq, hex.EncodeToString(k))
	}
	return "key " + hex.EncodeToString(k)
}

// checkStream validates a stream id for use in keys.
func checkStream(stream string) error {
	if stream == "" {
		return fmt.Errorf("%w: empty stream id", ErrInvalid)
	}
	if strings.IndexByte(stream, 0) >= 0 {
		return fmt.Errorf("%w: stream id %q contains a NUL byte", ErrInvalid, stream)
	}
	return nil
}
