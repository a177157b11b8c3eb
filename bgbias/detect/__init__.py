"""Detection: background-bias benchmarks for object detectors (report 000, second half).

Detection sources keep every annotated instance (:mod:`bgbias.detect.data`, the synthetic
multi-digit set in :mod:`bgbias.detect.synthetic`); builds write each background variant in
a layout COCO tools read (:mod:`bgbias.detect.build`); ``eval-detect`` scores any detector
or COCO results files with pycocotools per background (:mod:`bgbias.detect.evaluate`);
:class:`~bgbias.detect.augment.DetectionBackgroundSwap` and :mod:`bgbias.detect.train`
fine-tune torchvision detectors with background augmentation; the report's detection section
is :mod:`bgbias.report.detection` (no torch). Comes after ``train`` in the stage order.
"""
