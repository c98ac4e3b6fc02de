package export

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/episoded/episoded/sample"
)

// Schema names of the Foxglove well-known schemas used by the export.
const (
	SchemaCompressedVideo = "foxglove.CompressedVideo"
	SchemaPointCloud      = "foxglove.PointCloud"
)

// The Foxglove schemas are declared here as descriptor protos (the same
// fields and numbers as foxglove/schemas' .proto files), so that no protoc
// run is needed; the serialized FileDescriptorSet is the MCAP schema data.

func field(name string, num int32, typ descriptorpb.FieldDescriptorProto_Type, typeName string, repeated bool) *descriptorpb.FieldDescriptorProto {
	f := &descriptorpb.FieldDescriptorProto{
		Name:     proto.String(name),
		Number:   proto.Int32(num),
		Type:     typ.Enum(),
		Label:    descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
		JsonName: proto.String(jsonName(name)),
	}
	if repeated {
		f.Label = descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	}
	if typeName != "" {
		f.TypeName = proto.String(typeName)
	}
	return f
}

func jsonName(s string) string {
	out := make([]byte, 0, len(s))
	up := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' {
			up = true
			continue
		}
		if up && c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		up = false
		out = append(out, c)
	}
	return string(out)
}

func file(name string, deps []string, msgs ...*descriptorpb.DescriptorProto) *descriptorpb.FileDescriptorProto {
	return &descriptorpb.FileDescriptorProto{
		Name:        proto.String(name),
		Package:     proto.String("foxglove"),
		Dependency:  deps,
		MessageType: msgs,
		Syntax:      proto.String("proto3"),
	}
}

const (
	tMsg     = descriptorpb.FieldDescriptorProto_TYPE_MESSAGE
	tString  = descriptorpb.FieldDescriptorProto_TYPE_STRING
	tBytes   = descriptorpb.FieldDescriptorProto_TYPE_BYTES
	tDouble  = descriptorpb.FieldDescriptorProto_TYPE_DOUBLE
	tFixed32 = descriptorpb.FieldDescriptorProto_TYPE_FIXED32
	tEnum    = descriptorpb.FieldDescriptorProto_TYPE_ENUM
)

func timestampFile() *descriptorpb.FileDescriptorProto {
	return protodesc.ToFileDescriptorProto(timestamppb.File_google_protobuf_timestamp_proto)
}

func compressedVideoFile() *descriptorpb.FileDescriptorProto {
	return file("foxglove/CompressedVideo.proto", []string{"google/protobuf/timestamp.proto"},
		&descriptorpb.DescriptorProto{
			Name: proto.String("CompressedVideo"),
			Field: []*descriptorpb.FieldDescriptorProto{
				field("timestamp", 1, tMsg, ".google.protobuf.Timestamp", false),
				field("frame_id", 2, tString, "", false),
				field("data", 3, tBytes, "", false),
				field("format", 4, tString, "", false),
			},
		})
}

func pointCloudFiles() []*descriptorpb.FileDescriptorProto {
	vec := file("foxglove/Vector3.proto", nil, &descriptorpb.DescriptorProto{
		Name: proto.String("Vector3"),
		Field: []*descriptorpb.FieldDescriptorProto{
			field("x", 1, tDouble, "", false), field("y", 2, tDouble, "", false), field("z", 3, tDouble, "", false),
		},
	})
	quat := file("foxglove/Quaternion.proto", nil, &descriptorpb.DescriptorProto{
		Name: proto.String("Quaternion"),
		Field: []*descriptorpb.FieldDescriptorProto{
			field("x", 1, tDouble, "", false), field("y", 2, tDouble, "", false),
			field("z", 3, tDouble, "", false), field("w", 4, tDouble, "", false),
		},
	})
	pose := file("foxglove/Pose.proto", []string{"foxglove/Quaternion.proto", "foxglove/Vector3.proto"},
		&descriptorpb.DescriptorProto{
			Name: proto.String("Pose"),
			Field: []*descriptorpb.FieldDescriptorProto{
				field("position", 1, tMsg, ".foxglove.Vector3", false),
				field("orientation", 2, tMsg, ".foxglove.Quaternion", false),
			},
		})
	numericTypes := []string{"UNKNOWN", "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "FLOAT64"}
	enum := &descriptorpb.EnumDescriptorProto{Name: proto.String("NumericType")}
	for i, n := range numericTypes {
		enum.Value = append(enum.Value, &descriptorpb.EnumValueDescriptorProto{Name: proto.String(n), Number: proto.Int32(int32(i))})
	}
	pef := file("foxglove/PackedElementField.proto", nil, &descriptorpb.DescriptorProto{
		Name: proto.String("PackedElementField"),
		Field: []*descriptorpb.FieldDescriptorProto{
			field("name", 1, tString, "", false),
			field("offset", 2, tFixed32, "", false),
			field("type", 3, tEnum, ".foxglove.PackedElementField.NumericType", false),
		},
		EnumType: []*descriptorpb.EnumDescriptorProto{enum},
	})
	pc := file("foxglove/PointCloud.proto",
		[]string{"foxglove/PackedElementField.proto", "foxglove/Pose.proto", "google/protobuf/timestamp.proto"},
		&descriptorpb.DescriptorProto{
			Name: proto.String("PointCloud"),
			Field: []*descriptorpb.FieldDescriptorProto{
				field("timestamp", 1, tMsg, ".google.protobuf.Timestamp", false),
				field("frame_id", 2, tString, "", false),
				field("pose", 3, tMsg, ".foxglove.Pose", false),
				field("point_stride", 4, tFixed32, "", false),
				field("fields", 5, tMsg, ".foxglove.PackedElementField", true),
				field("data", 6, tBytes, "", false),
			},
		})
	return []*descriptorpb.FileDescriptorProto{vec, quat, pose, pef, pc}
}

// descriptorSet serializes files (dependencies first) deterministically.
func descriptorSet(files ...*descriptorpb.FileDescriptorProto) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&descriptorpb.FileDescriptorSet{File: files})
	if err != nil {
		panic(fmt.Sprintf("export: marshal descriptor set: %v", err)) // static input; cannot fail
	}
	return b
}

// CompressedVideoSchema returns the MCAP schema data for
// foxglove.CompressedVideo: a FileDescriptorSet with
// google/protobuf/timestamp.proto and foxglove/CompressedVideo.proto.
func CompressedVideoSchema() []byte {
	return descriptorSet(timestampFile(), compressedVideoFile())
}

// PointCloudSchema returns the MCAP schema data for foxglove.PointCloud.
func PointCloudSchema() []byte {
	return descriptorSet(append([]*descriptorpb.FileDescriptorProto{timestampFile()}, pointCloudFiles()...)...)
}

// appendTimestamp appends field num as a google.protobuf.Timestamp.
func appendTimestamp(b []byte, num protowire.Number, ns int64) []byte {
	sec, nsec := ns/1e9, ns%1e9
	if nsec < 0 {
		sec--
		nsec += 1e9
	}
	var inner []byte
	if sec != 0 {
		inner = protowire.AppendTag(inner, 1, protowire.VarintType)
		inner = protowire.AppendVarint(inner, uint64(sec))
	}
	if nsec != 0 {
		inner = protowire.AppendTag(inner, 2, protowire.VarintType)
		inner = protowire.AppendVarint(inner, uint64(nsec))
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, inner)
}

// appendCompressedVideo encodes a foxglove.CompressedVideo message.
func appendCompressedVideo(b []byte, t int64, frameID string, data []byte, format string) []byte {
	b = appendTimestamp(b, 1, t)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, frameID)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, data)
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	return protowire.AppendString(b, format)
}

var numericType = map[string]uint64{
	"uint8": 1, "int8": 2, "uint16": 3, "int16": 4, "uint32": 5, "int32": 6, "float32": 7, "float64": 8,
}

// identityPose is a foxglove.Pose at the origin with unit orientation.
var identityPose = func() []byte {
	var quat []byte
	quat = protowire.AppendTag(quat, 4, protowire.Fixed64Type)
	quat = protowire.AppendFixed64(quat, math.Float64bits(1))
	var pose []byte
	pose = protowire.AppendTag(pose, 1, protowire.BytesType)
	pose = protowire.AppendBytes(pose, nil)
	pose = protowire.AppendTag(pose, 2, protowire.BytesType)
	return protowire.AppendBytes(pose, quat)
}()

// pointCloudPrefix encodes the fields of a foxglove.PointCloud that are the
// same for every frame of a layout (pose, point_stride, fields).
func pointCloudPrefix(l *sample.PointLayout) []byte {
	var b []byte
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, identityPose)
	b = protowire.AppendTag(b, 4, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, uint32(l.Stride))
	for _, f := range l.Fields {
		var pf []byte
		pf = protowire.AppendTag(pf, 1, protowire.BytesType)
		pf = protowire.AppendString(pf, f.Name)
		pf = protowire.AppendTag(pf, 2, protowire.Fixed32Type)
		pf = protowire.AppendFixed32(pf, uint32(f.Offset))
		pf = protowire.AppendTag(pf, 3, protowire.VarintType)
		pf = protowire.AppendVarint(pf, numericType[f.Type])
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, pf)
	}
	return b
}

// appendPointCloud encodes a foxglove.PointCloud message; prefix comes from
// pointCloudPrefix. Fields are written in field-number order.
func appendPointCloud(b []byte, t int64, frameID string, prefix, data []byte) []byte {
	b = appendTimestamp(b, 1, t)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, frameID)
	b = append(b, prefix...)
	b = protowire.AppendTag(b, 6, protowire.BytesType)
	return protowire.AppendBytes(b, data)
}
