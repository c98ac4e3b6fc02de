package video

// NTPEpochOffset is the number of seconds from 1900-01-01 (the NTP epoch)
// to 1970-01-01 (the Unix epoch).
const NTPEpochOffset = 2208988800

// NTPToUnixNano converts an RFC 3550 64-bit NTP timestamp (32.32 fixed
// point seconds since 1900) to ns since the Unix epoch, rounded to the
// nearest ns.
//
// Note: gortsplib v4.16.2 (the pinned version) decodes the low 32 bits of a
// sender report's NTP time as nanoseconds instead of 2^-32 s fractions, so
// its Client.PacketNTP is off by up to ~3.3 s for a standard sender; every
// receiver here decodes sender reports with this function instead.
func NTPToUnixNano(ntp uint64) int64 {
	secs := int64(ntp >> 32)
	frac := ntp & 0xFFFFFFFF
	ns := (frac*1e9 + 1<<31) >> 32
	return (secs-NTPEpochOffset)*1e9 + int64(ns)
}

// UnixNanoToNTP encodes ns since the Unix epoch as a 64-bit NTP timestamp
// (RFC 3550 §4): seconds since 1900-01-01 in the upper 32 bits, the
// fraction of a second times 2^32 in the lower 32 bits, rounded to the
// nearest, so that NTPToUnixNano(UnixNanoToNTP(t)) == t.
func UnixNanoToNTP(unixNano int64) uint64 {
	secs := unixNano / 1e9
	frac := unixNano % 1e9
	if frac < 0 {
		secs--
		frac += 1e9
	}
	f := (uint64(frac)<<32 + 5e8) / 1e9
	return uint64(secs+NTPEpochOffset)<<32 + f
}

// SenderReport is the latest RTCP sender report of one RTP stream: RTP
// time RTP was NTP (ns since the Unix epoch) on the sender's clock.
type SenderReport struct {
	SSRC uint32
	NTP  int64
	RTP  uint32
}

// At maps RTP timestamp ts, at clockRate ticks per second, to ns since the
// Unix epoch on the sender's clock. Timestamps within 2^31 ticks either
// side of the report are handled across wrap-around.
func (r *SenderReport) At(ts uint32, clockRate int64) int64 {
	d := int64(int32(ts - r.RTP))
	return r.NTP + d*1e9/clockRate
}
