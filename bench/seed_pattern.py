"""(c) of bench/featurize.py: the featurization pattern the seeds published, run their way.

A SCALAR_ITER pandas UDF with broadcast weights that builds the model at the start of
every task, PIL resize to 224 without draft mode, `model.predict` per Arrow batch of 1024,
default Spark file partitioning and default TensorFlow threading; features to Parquet.
Run by spark-submit; prints one JSON line: {"images": N, "seconds": S}.
"""

from __future__ import annotations

import io
import json
import sys
import time

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql.functions import PandasUDFType, col, pandas_udf


def main() -> None:
    input_dir, output_dir, weights_file = sys.argv[1:4]
    spark = SparkSession.builder.appName("seed pattern").getOrCreate()
    start = time.perf_counter()
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "1024")
    import keras
    from keras.applications.mobilenet_v2 import preprocess_input

    def model_fn():
        model = keras.applications.MobileNetV2(include_top=False, weights=None, pooling="avg")
        model.set_weights(bc_model_weights.value)
        return model

    driver_model = keras.applications.MobileNetV2(include_top=False, weights=None,
                                                  pooling="avg")
    driver_model.load_weights(weights_file)
    bc_model_weights = spark.sparkContext.broadcast(driver_model.get_weights())

    def preprocess(content):
        from PIL import Image

        img = Image.open(io.BytesIO(content)).resize([224, 224])
        arr = keras.utils.img_to_array(img)
        return preprocess_input(arr)

    def featurize_series(model, content_series):
        batch = np.stack(content_series.map(preprocess))
        preds = model.predict(batch, verbose=0)
        return pd.Series([p.flatten() for p in preds])

    @pandas_udf("array<float>", PandasUDFType.SCALAR_ITER)
    def featurize_udf(content_series_iter):
        model = model_fn()
        for content_series in content_series_iter:
            yield featurize_series(model, content_series)

    images = spark.read.format("binaryFile").option("recursiveFileLookup", "true") \
        .option("pathGlobFilter", "*.jpg").load(input_dir)
    features = images.select(col("path"), featurize_udf("content").alias("features"))
    features.write.mode("overwrite").parquet(output_dir)
    n = spark.read.parquet(output_dir).count()
    print(json.dumps({"images": n, "seconds": round(time.perf_counter() - start, 3),
                      "partitions": images.rdd.getNumPartitions()}))


if __name__ == "__main__":
    main()
