"""Installs cmt-deeplab-tf: CMT-DeepLab (CVPR 2022) in TensorFlow 2 / tf_keras."""
import setuptools

_CLIS = {
    'cmt-synthetic-data': 'cmt_deeplab_tf.data.synthetic:run',
    'cmt-convert-coco': 'cmt_deeplab_tf.data.convert_coco:run',
    'cmt-convert-cityscapes': 'cmt_deeplab_tf.data.convert_cityscapes:run',
    'cmt-train': 'cmt_deeplab_tf.train:run',
    'cmt-export': 'cmt_deeplab_tf.export:run',
    'cmt-predict': 'cmt_deeplab_tf.predict:run',
    'cmt-visualize': 'cmt_deeplab_tf.visualize:run',
    'cmt-render-tables': 'cmt_deeplab_tf.render_tables:run',
    'cmt-cost-table': 'cmt_deeplab_tf.cost_table:run',
    'cmt-sweep': 'cmt_deeplab_tf.sweep:run',
    'cmt-import-deeplab2': 'cmt_deeplab_tf.import_deeplab2:run',
}

setuptools.setup(
    name='cmt-deeplab-tf',
    version='0.1.0',
    description='CMT-DeepLab: Clustering Mask Transformers for Panoptic '
                'Segmentation, in TensorFlow 2.',
    packages=setuptools.find_packages(include=['cmt_deeplab_tf', 'cmt_deeplab_tf.*'])
    + ['cmt_deeplab_tf.gin_configs'],
    # The gin configs stay at the top of the source tree and install as
    # cmt_deeplab_tf/gin_configs (found by name: cmt_deeplab_tf/config_files.py).
    package_dir={'cmt_deeplab_tf.gin_configs': 'gin_configs'},
    package_data={'cmt_deeplab_tf.gin_configs': ['*/*.gin']},
    python_requires='>=3.9',
    install_requires=[
        'tensorflow==2.20.*',
        'tf-keras==2.20.*',
        'tf-models-official==2.20.0',
        'tensorflow-datasets',
        'numpy',
        'scipy',
        'pycocotools',
        'absl-py',
        'gin-config',
        'pillow',
        'matplotlib',
        'ray>=2.40',  # Sweeps run as Ray tasks; tested with 2.60.
        # Deployment: TFLite interpreter, ONNX export (tf2onnx's handler API) and runtime.
        'ai-edge-litert',
        'tf2onnx==1.17.*',
        'onnx',
        'onnxruntime',
    ],
    extras_require={'test': ['pytest', 'pytest-xdist', 'cityscapesscripts']},
    entry_points={'console_scripts': [f'{k}={v}' for k, v in _CLIS.items()]},
)
