// Reading a whole image for people (`stasis inspect`) and for tests.
#pragma once

#include <nlohmann/json.hpp>

#include "image/stream.h"
#include "sys/result.h"

namespace stasis::image {

// Reads the whole stream and describes it:
//   {"format": {"major": 1, "minor": 0},
//    "records": [{"type": "manifest", "offset": 24, "message": {...}}, ...],
//    "pages": {"records": R, "pages": P, "bytes": B}}
// Message records carry their protobuf JSON (proto field names, defaults
// omitted). Page records are listed, as {"type": "pages", "offset", "pid",
// "addr": "0x...", "npages"}, only with with_pages_summary: a dump has
// thousands of them; the "pages" totals are always there.
// Any damage in the stream fails the whole call: a partial listing of a
// corrupt image would look like a complete one.
Result<nlohmann::json> InspectImage(Source& source, bool with_pages_summary);

// Decodes every record, parsing messages into their types, and encodes them
// again. For an image this build wrote, out receives identical bytes, which
// is what the tests hold the encoder to.
Status ReencodeImage(Source& in, Sink& out);

}  // namespace stasis::image
