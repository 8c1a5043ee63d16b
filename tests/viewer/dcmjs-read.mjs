// Read the node's SEG and SR with dcmjs (the parser OHIF and Cornerstone use) and print what it
// found as JSON: segments with their frames' source images, and the SR's measurement groups.
// Usage: node dcmjs-read.mjs SEG_FILE SR_FILE
import dcmjs from 'dcmjs';
import fs from 'node:fs';

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;
const asArray = v => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

function read(file) {
  const buffer = fs.readFileSync(file);
  const dicom = DicomMessage.readFile(buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength));
  return DicomMetaDictionary.naturalizeDataset(dicom.dict);
}

const [segFile, srFile] = process.argv.slice(2);
const seg = read(segFile);
const segments = asArray(seg.SegmentSequence).map(s => ({
  number: s.SegmentNumber,
  label: s.SegmentLabel,
  trackingUid: s.TrackingUID,
  cielab: asArray(s.RecommendedDisplayCIELabValue),
}));
const frames = asArray(seg.PerFrameFunctionalGroupsSequence).map(f => ({
  segment: asArray(f.SegmentIdentificationSequence)[0].ReferencedSegmentNumber,
  sources: asArray(asArray(f.DerivationImageSequence)[0]?.SourceImageSequence).map(s => s.ReferencedSOPInstanceUID),
}));

const sr = read(srFile);
const code = item => asArray(item.ConceptNameCodeSequence)[0] || {};
const imaging = asArray(sr.ContentSequence).find(i => code(i).CodeValue === '126010');
const groups = asArray(imaging?.ContentSequence).map(group => {
  const items = asArray(group.ContentSequence);
  const text = value => items.find(i => code(i).CodeValue === value);
  return {
    trackingId: text('112039')?.TextValue,
    trackingUid: text('112040')?.UID,
    comment: text('121106')?.TextValue,
    scoord: items.filter(i => i.ValueType === 'SCOORD').map(i => ({
      graphicType: i.GraphicType,
      data: asArray(i.GraphicData),
      image: asArray(asArray(i.ContentSequence)[0]?.ReferencedSOPSequence)[0]?.ReferencedSOPInstanceUID,
    })),
    segment: items.filter(i => i.ValueType === 'IMAGE').map(i => asArray(i.ReferencedSOPSequence)[0])
      .filter(r => r && r.ReferencedSegmentNumber !== undefined).map(r => r.ReferencedSegmentNumber)[0],
    nums: items.filter(i => i.ValueType === 'NUM').map(i => {
      const mv = asArray(i.MeasuredValueSequence)[0];
      const derivation = asArray(i.ContentSequence).find(c => code(c).CodeValue === '121401');
      return {
        name: code(i).CodeValue,
        value: Number(mv.NumericValue),
        unit: asArray(mv.MeasurementUnitsCodeSequence)[0].CodeValue,
        derivation: derivation ? asArray(derivation.ConceptCodeSequence)[0].CodeValue : null,
      };
    }),
  };
});
process.stdout.write(JSON.stringify({
  seg: { sopInstanceUid: seg.SOPInstanceUID, seriesDescription: seg.SeriesDescription, segments, frames },
  sr: { sopInstanceUid: sr.SOPInstanceUID, seriesDescription: sr.SeriesDescription, groups },
}));
