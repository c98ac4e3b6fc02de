package storage

import "encoding/binary"

// appendRecord appends the CBOR encoding of r to dst. It is the hot path of
// Append, so it is written by hand; TestSampleRecordEncoding checks that it
// is byte-for-byte identical to fxamacker/cbor's core deterministic
// encoding of the same struct (toarray, shortest integers, nil as null).
func appendRecord(dst []byte, r *sampleRec) ([]byte, error) {
	dst = append(dst, 0x80|12) // array of 12
	dst = cborUint(dst, 0, uint64(r.V))
	dst = cborInt(dst, r.SrcT)
	dst = cborInt(dst, r.RecvT)
	dst = cborUint(dst, 0, uint64(r.Flags))
	dst = cborUint(dst, 0, uint64(r.Lost))
	dst = cborUint(dst, 0, uint64(r.Dropped))
	if r.Payload == nil {
		dst = append(dst, 0xf6)
	} else {
		dst = cborUint(dst, 2, uint64(len(r.Payload)))
		dst = append(dst, r.Payload...)
	}
	dst = cborUint(dst, 0, r.Seg)
	dst = cborInt(dst, r.Off)
	dst = cborUint(dst, 0, uint64(r.Len))
	dst = cborUint(dst, 0, uint64(r.Sum))
	dst = cborInt(dst, r.PTSOffset)
	return dst, nil
}

func cborInt(dst []byte, v int64) []byte {
	if v < 0 {
		return cborUint(dst, 1, uint64(-1-v))
	}
	return cborUint(dst, 0, uint64(v))
}

func cborUint(dst []byte, major byte, v uint64) []byte {
	m := major << 5
	switch {
	case v < 24:
		return append(dst, m|byte(v))
	case v <= 0xff:
		return append(dst, m|24, byte(v))
	case v <= 0xffff:
		return binary.BigEndian.AppendUint16(append(dst, m|25), uint16(v))
	case v <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(dst, m|26), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(dst, m|27), v)
	}
}
