package storage

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
)

// formatVersion is the version of the store layout and of every record this
// build writes. A store or record with a higher version is refused with
// ErrNewerFormat; lower versions are read.
//
// Version 2 added the presentation offset to sample records (a 12th array
// element, see sampleRec); version 1 sample records (11 elements) are read
// with offset 0. Other records did not change between 1 and 2.
const formatVersion = 2

// storeMagic identifies an episoded store in the marker file and meta record.
const storeMagic = "episoded-store"

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	// Core deterministic encoding (RFC 8949 §4.2.1): shortest integers,
	// definite lengths, sorted map keys. Times are plain int64 ns, never
	// CBOR time tags.
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		MaxArrayElements: 1 << 20,
		MaxMapPairs:      1 << 20,
		MaxNestedLevels:  16,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// metaRec is stored under metaKey("format") and mirrors the marker file.
type metaRec struct {
	V       int    `cbor:"v"`
	Magic   string `cbor:"magic"`
	Created int64  `cbor:"created"`
}

// sampleRec is the value under a sample key. Stream, T and Seq live in the
// key. A payload is either inline (Seg == 0) or in a segment file at
// [Off, Off+Len) with CRC-32C Sum.
type sampleRec struct {
	_       struct{} `cbor:",toarray"`
	V       uint8
	SrcT    int64
	RecvT   int64
	Flags   uint8
	Lost    uint32
	Dropped uint32
	Payload []byte
	Seg     uint64
	Off     int64
	Len     uint32
	Sum     uint32
	// PTSOffset (format 2) is the sample's presentation time minus T.
	PTSOffset int64
}

// sampleRecV1 is a format 1 sample record: sampleRec without PTSOffset.
type sampleRecV1 struct {
	_       struct{} `cbor:",toarray"`
	V       uint8
	SrcT    int64
	RecvT   int64
	Flags   uint8
	Lost    uint32
	Dropped uint32
	Payload []byte
	Seg     uint64
	Off     int64
	Len     uint32
	Sum     uint32
}

// UnmarshalCBOR reads both sample record layouts: format 1 (an array of 11)
// and format 2 (an array of 12).
func (r *sampleRec) UnmarshalCBOR(data []byte) error {
	if len(data) > 0 && data[0] == 0x80|11 {
		var o sampleRecV1
		if err := decMode.Unmarshal(data, &o); err != nil {
			return err
		}
		*r = sampleRec{V: o.V, SrcT: o.SrcT, RecvT: o.RecvT, Flags: o.Flags, Lost: o.Lost, Dropped: o.Dropped,
			Payload: o.Payload, Seg: o.Seg, Off: o.Off, Len: o.Len, Sum: o.Sum}
		return nil
	}
	type plain sampleRec // without this method
	return decMode.Unmarshal(data, (*plain)(r))
}

// descRec is one version of a stream descriptor.
type descRec struct {
	V int               `cbor:"v"`
	D sample.Descriptor `cbor:"d"`
}

// episodeRec wraps an episode with what storage knows about its data.
type episodeRec struct {
	V int             `cbor:"v"`
	E episode.Episode `cbor:"e"`
	// Evicted is the wall-clock time (ns) at which the episode's sample data
	// was evicted, 0 if it is still present. The record itself is kept.
	Evicted     int64  `cbor:"evicted,omitempty"`
	EvictReason string `cbor:"evict_reason,omitempty"`
}

// uploadRec wraps an UploadState.
type uploadRec struct {
	V int         `cbor:"v"`
	U UploadState `cbor:"u"`
}

// segRec describes one segment file. Size is the committed length: every
// byte beyond it is a torn write and is truncated on open.
type segRec struct {
	V      int    `cbor:"v"`
	Stream string `cbor:"stream"`
	Slice  int64  `cbor:"slice"`
	MinT   int64  `cbor:"min_t"`
	MaxT   int64  `cbor:"max_t"`
	Size   int64  `cbor:"size"`
}

// recVersion returns a decoded record's version, so that decode can refuse
// records written by a newer format.
func recVersion(v any) int {
	switch r := v.(type) {
	case *metaRec:
		return r.V
	case *sampleRec:
		return int(r.V)
	case *descRec:
		return r.V
	case *episodeRec:
		return r.V
	case *uploadRec:
		return r.V
	case *segRec:
		return r.V
	}
	return 0
}

func marshal(v any) ([]byte, error) { return encMode.Marshal(v) }

// unmarshal decodes a record and checks its version. When decoding fails it
// still tries to read the version, so that a record from a newer format is
// reported as ErrNewerFormat rather than as garbage.
func unmarshal(data []byte, v any) error {
	if err := decMode.Unmarshal(data, v); err != nil {
		if ver, ok := peekVersion(data); ok && ver > formatVersion {
			return fmt.Errorf("%w: record version %d, this build reads up to %d", ErrNewerFormat, ver, formatVersion)
		}
		return err
	}
	if ver := recVersion(v); ver > formatVersion {
		return fmt.Errorf("%w: record version %d, this build reads up to %d", ErrNewerFormat, ver, formatVersion)
	} else if ver < 1 {
		return errors.New("record has no version")
	}
	return nil
}

func peekVersion(data []byte) (int, bool) {
	var arr []cbor.RawMessage
	if decMode.Unmarshal(data, &arr) == nil && len(arr) > 0 {
		var v int
		if decMode.Unmarshal(arr[0], &v) == nil {
			return v, true
		}
	}
	var m struct {
		V int `cbor:"v"`
	}
	if decMode.Unmarshal(data, &m) == nil && m.V != 0 {
		return m.V, true
	}
	return 0, false
}
